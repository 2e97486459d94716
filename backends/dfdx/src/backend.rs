//! The [`Dfdx`] backend: its tensor helpers, the GEMM, and the [`Backend`] trait, each kernel
//! delegating to its family's module ([`crate::router`], [`crate::reduce`], [`crate::simbal`]).

use crate::dev_err;
use dfdx::shapes::{Axes2, Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Tensor};
use dfdx::tensor_ops::{Device, PermuteTo, ReshapeTo, TryAdd, TryMatMul, TryMul};
use simbal_core::gemm::GemmArgs;
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{BackwardSums, Route, RouteSums, RouterBackward};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::zloss::LseSqSum;
use simbal_core::{Backend, Checked, Gemm, Memory, Result, Scalar, SimbalError, WeightLayout};
use std::marker::PhantomData;

/// A 1-D dfdx tensor: the backend's element buffer.
pub type Vector<E, D = Cpu> = Tensor<(usize,), E, D>;
/// A 2-D dfdx tensor with run-time dimensions.
pub type Matrix<E, D = Cpu> = Tensor<(usize, usize), E, D>;

/// The simbal backend over dfdx 0.13 tensors on device `D` (default: dfdx's [`Cpu`]), in `E`
/// (`f32` or `f64`).
///
/// Element buffers are 1-D tensors ([`Vector`], both the owned buffer and the view kernels
/// take); index buffers are host `Vec<u32>` lent as `[u32]`. dfdx 0.13 lends no slice of a
/// tensor's memory, so element buffers have no host view (on every device): the kernels the
/// backend does not run as dfdx ops are staged through the host by the core defaults.
#[derive(Debug, Clone)]
pub struct Dfdx<E, D = Cpu> {
    pub(crate) dev: D,
    _e: PhantomData<E>,
}

impl<E> Dfdx<E, Cpu> {
    /// The backend on a default dfdx [`Cpu`] device.
    pub fn cpu() -> Self {
        Self::with_device(Cpu::default())
    }
}

impl<E> Default for Dfdx<E, Cpu> {
    fn default() -> Self {
        Self::cpu()
    }
}

impl<E, D> Dfdx<E, D> {
    /// The backend on a given dfdx device (any device dfdx implements `Device<E>` for).
    pub fn with_device(dev: D) -> Self {
        Self {
            dev,
            _e: PhantomData,
        }
    }

    /// The dfdx device.
    pub fn device(&self) -> &D {
        &self.dev
    }
}

/// A tensor's elements in logical (row-major) order. dfdx 0.13's `as_vec` panics on an empty
/// tensor, so that case is answered here.
pub(crate) fn host_vec<S: Shape, E: Dtype, D: Device<E>, T>(t: &Tensor<S, E, D, T>) -> Vec<E> {
    if t.shape().num_elements() == 0 {
        Vec::new()
    } else {
        t.as_vec()
    }
}

/// Maps a dfdx result into a simbal one.
pub(crate) fn dx<T, Er: core::fmt::Display>(r: core::result::Result<T, Er>) -> Result<T> {
    r.map_err(dev_err)
}

impl<E: Scalar + Dtype, D: Device<E>> Dfdx<E, D> {
    /// A fresh contiguous vector holding `host`.
    pub(crate) fn vector(&self, host: Vec<E>) -> Result<Vector<E, D>> {
        let len = host.len();
        dx(self.dev.try_tensor_from_vec(host, (len,)))
    }

    /// `buf` viewed as a `rows x cols` row-major matrix (no copy for a contiguous buffer). The
    /// caller's lengths were checked by core (dfdx asserts them).
    pub(crate) fn mat(buf: &Vector<E, D>, rows: usize, cols: usize) -> Result<Matrix<E, D>> {
        dx(buf.clone().try_reshape_like(&(rows, cols)))
    }

    /// A tensor flattened into a contiguous vector (copies only a non-contiguous view).
    pub(crate) fn flat<S: Shape>(t: Tensor<S, E, D>) -> Result<Vector<E, D>> {
        let len = t.shape().num_elements();
        dx(t.try_reshape_like(&(len,)))
    }

    /// The `rows x cols` matrix of `buf`, read transposed when `trans` (a permuted view).
    fn operand(buf: &Vector<E, D>, rows: usize, cols: usize, trans: bool) -> Result<Matrix<E, D>> {
        if trans {
            dx(Self::mat(buf, cols, rows)?.try_permute::<_, Axes2<1, 0>>())
        } else {
            Self::mat(buf, rows, cols)
        }
    }

    /// The router weight viewed as `D x E` whichever layout stores it (a permuted view for
    /// `E x D`).
    pub(crate) fn as_dxe(
        layout: WeightLayout,
        d: usize,
        e: usize,
        buf: &Vector<E, D>,
    ) -> Result<Matrix<E, D>> {
        Self::operand(buf, d, e, layout == WeightLayout::ExD)
    }

    /// A `D x E` matrix stored back in `layout` as a contiguous vector.
    pub(crate) fn store_layout(layout: WeightLayout, m: Matrix<E, D>) -> Result<Vector<E, D>> {
        match layout {
            WeightLayout::DxE => Self::flat(m),
            WeightLayout::ExD => Self::flat(dx(m.try_permute::<_, Axes2<1, 0>>())?),
        }
    }

    /// Reads a one-element tensor.
    pub(crate) fn scalar<S: Shape>(t: &Tensor<S, E, D>) -> Result<E> {
        host_vec(t).first().copied().ok_or(SimbalError::Backend {
            message: String::from("dfdx: an empty reduction result"),
        })
    }

    /// `C = alpha op(A) op(B) + beta C` by dfdx's `matmul` on reshaped (and, for a transpose,
    /// permuted) views.
    fn matmul(
        &self,
        g: &Gemm,
        a: &Vector<E, D>,
        b: &Vector<E, D>,
        c: &mut Vector<E, D>,
    ) -> Result<()> {
        let (m, n, k) = (g.m, g.n, g.k);
        if m == 0 || n == 0 {
            return Ok(());
        }
        let beta = E::of(g.beta);
        if k == 0 {
            // The product is empty: C = beta C (beta = 0 overwrites, even NaN).
            *c = if g.beta == 0.0 {
                self.zeros(m * n)?
            } else {
                dx(c.clone().try_mul(beta))?
            };
            return Ok(());
        }
        let a = Self::operand(a, m, k, g.trans_a)?;
        let b = Self::operand(b, k, n, g.trans_b)?;
        let mut prod = dx(a.try_matmul(b))?;
        if g.alpha != 1.0 {
            prod = dx(prod.try_mul(E::of(g.alpha)))?;
        }
        if g.beta != 0.0 {
            let old = Self::mat(c, m, n)?;
            let old = if g.beta == 1.0 {
                old
            } else {
                dx(old.try_mul(beta))?
            };
            prod = dx(prod.try_add(old))?;
        }
        *c = Self::flat(prod)?;
        Ok(())
    }
}

/// Every kernel but `dispatch`, `group_counts`, `lbl_coefficients`, `routing_stats`,
/// `token_groups` and `check_finite` (index work and position searches: the core defaults,
/// staged) runs as dfdx ops, the token mask and groups included ((`crate::groups`)); core has
/// checked each kernel's arguments.
impl<E: Scalar + Dtype, D: Device<E>> Backend for Dfdx<E, D> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        self.matmul(&a.gemm, a.a, a.b, a.c)
    }

    fn route(&self, a: Checked<Route<'_, Self>>) -> Result<RouteSums<E>> {
        if a.cfg.selection != simbal_core::Selection::TopK {
            // Sinkhorn balances over the whole batch: core's rows (dfdx's GEMM still).
            return simbal_core::backend::route_staged(self, a);
        }
        crate::router::route(self, a.into_inner())
    }

    fn router_backward(&self, a: Checked<RouterBackward<'_, Self>>) -> Result<BackwardSums<E>> {
        crate::router::router_backward(self, a.into_inner())
    }

    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        crate::reduce::group_column_sums(self, a.into_inner())
    }

    fn lse_sq_sum(&self, a: Checked<LseSqSum<'_, Self>>) -> Result<E> {
        crate::reduce::lse_sq_sum(self, a.into_inner())
    }

    fn simbal_residual(&self, a: Checked<SimbalResidual<'_, Self>>) -> Result<E> {
        crate::simbal::simbal_residual(self, a.into_inner())
    }

    fn normalize_columns(&self, a: Checked<NormalizeColumns<'_, Self>>) -> Result<()> {
        crate::simbal::normalize_columns(self, a.into_inner())
    }

    fn scale_free_project(&self, a: Checked<ScaleFreeProject<'_, Self>>) -> Result<()> {
        crate::simbal::scale_free_project(self, a.into_inner())
    }

    fn routing_entropy(&self, a: Checked<Entropy<'_, Self>>) -> Result<E> {
        crate::reduce::routing_entropy(self, a.into_inner())
    }

    fn max_abs(&self, buf: &Vector<E, D>) -> Result<E> {
        crate::reduce::max_abs(self, buf)
    }
}
