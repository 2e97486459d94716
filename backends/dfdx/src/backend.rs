//! The [`Dfdx`] backend: the [`Backend`] trait on dfdx tensors.

use crate::dev_err;
use dfdx::shapes::{Axes2, Axis, Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Tensor};
use dfdx::tensor_ops::{
    BroadcastTo, ChooseFrom, Device, GatherTo, LogSumExpTo, MaxTo, PermuteTo, ReshapeTo, SumTo,
    TryAdd, TryDiv, TryGt, TryLt, TryMatMul, TryMul, TryNe, TrySub,
};
use simbal_core::backend::LblCoef;
use simbal_core::ops::select::{gates_row, renorm_eps, select_row};
use simbal_core::shape::check_len;
use simbal_core::{
    check_gemm, Backend, Gemm, Result, RouterConfig, Scalar, ScoreFn, SimBalConfig, SimBalNorm,
    SimbalError, WeightLayout,
};
use std::marker::PhantomData;

/// A 1-D dfdx tensor: the backend's element buffer.
pub type Vector<E, D = Cpu> = Tensor<(usize,), E, D>;
/// A 2-D dfdx tensor with run-time dimensions.
pub type Matrix<E, D = Cpu> = Tensor<(usize, usize), E, D>;

/// The simbal backend over dfdx 0.13 tensors on device `D` (default: dfdx's [`Cpu`]), in `E`
/// (`f32` or `f64`).
///
/// Buffers are 1-D tensors ([`Vector`]); index buffers are host `Vec<u32>`. dfdx 0.13 lends no
/// slice of a tensor's memory, so the backend never claims host views ([`Backend::is_host`] is
/// false, on every device): kernels it does not run as dfdx ops are staged through the host by
/// the core defaults.
#[derive(Debug, Clone)]
pub struct Dfdx<E, D = Cpu> {
    dev: D,
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

    /// `buf` viewed as a `rows x cols` row-major matrix (no copy for a contiguous buffer).
    pub(crate) fn mat(
        &self,
        what: &'static str,
        buf: &Vector<E, D>,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix<E, D>> {
        let len = rows.checked_mul(cols).ok_or(SimbalError::LengthMismatch {
            what,
            expected: usize::MAX,
            got: buf.shape().0,
        })?;
        check_len(what, len, buf.shape().0)?;
        dx(buf.clone().try_reshape_like(&(rows, cols)))
    }

    /// A tensor flattened into a contiguous vector (copies only a non-contiguous view).
    pub(crate) fn flat<S: Shape>(t: Tensor<S, E, D>) -> Result<Vector<E, D>> {
        let len = t.shape().num_elements();
        dx(t.try_reshape_like(&(len,)))
    }

    /// The router weight viewed as `D x E` whichever layout stores it (a permuted view for
    /// `E x D`).
    fn as_dxe(
        &self,
        what: &'static str,
        layout: WeightLayout,
        d: usize,
        e: usize,
        buf: &Vector<E, D>,
    ) -> Result<Matrix<E, D>> {
        match layout {
            WeightLayout::DxE => self.mat(what, buf, d, e),
            WeightLayout::ExD => dx(self.mat(what, buf, e, d)?.try_permute::<_, Axes2<1, 0>>()),
        }
    }

    /// A `D x E` matrix stored back in `layout` as a contiguous vector.
    fn store_layout(layout: WeightLayout, m: Matrix<E, D>) -> Result<Vector<E, D>> {
        match layout {
            WeightLayout::DxE => Self::flat(m),
            WeightLayout::ExD => Self::flat(dx(m.try_permute::<_, Axes2<1, 0>>())?),
        }
    }

    /// `e x e` identity on the device.
    fn eye(&self, e: usize) -> Result<Matrix<E, D>> {
        let upper = dx(self.dev.try_upper_tri_like(&(e, e), E::one(), 0isize))?;
        let lower = dx(self.dev.try_lower_tri_like(&(e, e), E::one(), 0isize))?;
        dx(upper.try_mul(lower))
    }

    /// Reads a one-element tensor.
    fn scalar<S: Shape>(t: &Tensor<S, E, D>) -> Result<E> {
        host_vec(t).first().copied().ok_or(SimbalError::Backend {
            message: String::from("dfdx: an empty reduction result"),
        })
    }

    /// Checks every index of an `n x k` index buffer is below `e`.
    fn check_indices(idx: &[u32], e: usize) -> Result<()> {
        if idx.iter().any(|&i| i as usize >= e) {
            return Err(SimbalError::Backend {
                message: String::from("an expert index is out of range"),
            });
        }
        Ok(())
    }
}

impl<E: Scalar + Dtype, D: Device<E>> Backend for Dfdx<E, D> {
    type Elem = E;
    type Buf = Vector<E, D>;
    type IdxBuf = Vec<u32>;

    fn name(&self) -> String {
        let dev = std::any::type_name::<D>();
        let dev = dev.rsplit("::").next().unwrap_or(dev).to_lowercase();
        format!("dfdx-{dev}-{}", E::NAME)
    }

    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        dx(self.dev.try_zeros_like(&(len,)))
    }
    fn upload(&self, host: &[E]) -> Result<Self::Buf> {
        self.vector(host.to_vec())
    }
    fn download(&self, buf: &Self::Buf, host: &mut [E]) -> Result<()> {
        check_len("download target", buf.shape().0, host.len())?;
        // `as_vec` reads in logical order, so even a strided tensor handed in by a user is right.
        host.copy_from_slice(&host_vec(buf));
        Ok(())
    }
    fn write(&self, buf: &mut Self::Buf, host: &[E]) -> Result<()> {
        check_len("write source", buf.shape().0, host.len())?;
        *buf = self.vector(host.to_vec())?;
        Ok(())
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        buf.shape().0
    }
    fn idx_zeros(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn idx_upload(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn idx_download(&self, buf: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        check_len("download target", buf.len(), host.len())?;
        host.copy_from_slice(buf);
        Ok(())
    }
    fn idx_write(&self, buf: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        check_len("write source", buf.len(), host.len())?;
        buf.copy_from_slice(host);
        Ok(())
    }
    fn idx_len(&self, buf: &Vec<u32>) -> usize {
        buf.len()
    }
    // Index buffers really are host memory (on every device), so they are lent as slices; element
    // buffers are not (`is_host` stays false).
    fn idx_host<'a>(&self, buf: &'a Vec<u32>) -> Option<&'a [u32]> {
        Some(buf)
    }
    fn idx_host_mut<'a>(&self, buf: &'a mut Vec<u32>) -> Option<&'a mut [u32]> {
        Some(buf)
    }

    fn gemm(&self, g: &Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf) -> Result<()> {
        check_gemm(g, a.shape().0, b.shape().0, c.shape().0)?;
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
        let a = if g.trans_a {
            dx(self
                .mat("GEMM operand A", a, k, m)?
                .try_permute::<_, Axes2<1, 0>>())?
        } else {
            self.mat("GEMM operand A", a, m, k)?
        };
        let b = if g.trans_b {
            dx(self
                .mat("GEMM operand B", b, n, k)?
                .try_permute::<_, Axes2<1, 0>>())?
        } else {
            self.mat("GEMM operand B", b, k, n)?
        };
        let mut prod = dx(a.try_matmul(b))?;
        if g.alpha != 1.0 {
            prod = dx(prod.try_mul(E::of(g.alpha)))?;
        }
        if g.beta != 0.0 {
            let old = self.mat("GEMM operand C", c, m, n)?;
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

    /// Scores by dfdx's softmax or sigmoid; the top-k selection and the gates run on the host
    /// (dfdx has no top-k), on the downloaded scores.
    fn route_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Self::Buf,
        bias: Option<&Self::Buf>,
        p: &mut Self::Buf,
        idx: &mut Vec<u32>,
        gates: &mut Self::Buf,
    ) -> Result<()> {
        cfg.validate()?;
        let (e, k) = (cfg.experts, cfg.k);
        check_len("logits", n.saturating_mul(e), z.shape().0)?;
        check_len("scores", n.saturating_mul(e), p.shape().0)?;
        check_len("indices", n.saturating_mul(k), idx.len())?;
        check_len("gates", n.saturating_mul(k), gates.shape().0)?;
        if let Some(b) = bias {
            check_len("selection bias", e, b.shape().0)?;
        }
        if n == 0 || e == 0 {
            return Ok(());
        }
        let zt = self.mat("logits", z, n, e)?;
        let pt = match cfg.score {
            ScoreFn::Softmax => dx(zt.try_softmax::<Axis<1>>())?,
            ScoreFn::Sigmoid => dx(zt.try_sigmoid())?,
        };
        let ph = host_vec(&pt);
        let bias = bias.map(host_vec);
        let mut gh = vec![E::zero(); n * k];
        for ((pr, ir), wr) in ph
            .chunks_exact(e)
            .zip(idx.chunks_exact_mut(k))
            .zip(gh.chunks_exact_mut(k))
        {
            select_row(cfg, pr, bias.as_deref(), ir);
            gates_row(cfg, pr, ir, wr);
        }
        *p = Self::flat(pt)?;
        *gates = self.vector(gh)?;
        Ok(())
    }

    /// The gate gradient is scattered into `dP` on the host (an index operation); the LBL term,
    /// the score backward and the z-loss term are dfdx ops.
    fn router_backward_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Self::Buf,
        p: &Self::Buf,
        idx: &Vec<u32>,
        gates: &Self::Buf,
        dropped: &Vec<u32>,
        dw: &Self::Buf,
        lbl: Option<LblCoef<'_, Self::Buf>>,
        z_coef: E,
        dz: &mut Self::Buf,
    ) -> Result<()> {
        cfg.validate()?;
        let (e, k) = (cfg.experts, cfg.k);
        check_len("logits", n.saturating_mul(e), z.shape().0)?;
        check_len("scores", n.saturating_mul(e), p.shape().0)?;
        check_len("indices", n.saturating_mul(k), idx.len())?;
        check_len("gates", n.saturating_mul(k), gates.shape().0)?;
        check_len("dropped flags", n.saturating_mul(k), dropped.len())?;
        check_len("gate gradient", n.saturating_mul(k), dw.shape().0)?;
        check_len("logit gradient", n.saturating_mul(e), dz.shape().0)?;
        if let Some(l) = &lbl {
            if l.group_len == 0 || n % l.group_len != 0 {
                return Err(SimbalError::SequenceLength {
                    seq_len: l.group_len,
                    tokens: n,
                });
            }
            check_len(
                "LBL coefficients",
                (n / l.group_len).saturating_mul(e),
                l.coef.shape().0,
            )?;
        }
        Self::check_indices(idx, e)?;
        if n == 0 || e == 0 {
            return Ok(());
        }
        let pt = self.mat("scores", p, n, e)?;
        // The gate part is an index operation, done on the host; dense terms are dfdx ops.
        // Without renormalisation `dP_{i_j} = s dW_j` goes through the score backward with the
        // LBL term. With it, the gate term `a_j / denom` (`a_j = s dW_j - sum_l dW_l w_l`) is
        // taken through the score backward analytically with `q = p / denom <= 1`, as the
        // reference does, so an underflowed `denom` (saturated sigmoid rows) cannot give
        // `inf * 0 = NaN`: softmax adds `[c = i_j] a_j q_c - p_c m` (`m = sum_j a_j q_{i_j}`),
        // sigmoid adds `a_j q_{i_j} (1 - p_{i_j})` at the chosen experts.
        let gh = host_vec(gates);
        let dwh = host_vec(dw);
        let s = E::of(cfg.scale);
        let psel = if cfg.renormalize {
            let it: Tensor<(usize, usize), usize, D> = dx(self
                .dev
                .try_tensor_from_vec(idx.iter().map(|&i| i as usize).collect(), (n, k)))?;
            let sel: Matrix<E, D> = dx(pt.clone().try_gather(it))?;
            host_vec(&sel)
        } else {
            Vec::new()
        };
        let mut dp = vec![E::zero(); n * e];
        let mut sparse = vec![E::zero(); if cfg.renormalize { n * e } else { 0 }];
        let mut m = vec![E::zero(); if cfg.renormalize { n } else { 0 }];
        for t in 0..n {
            let row = t * k..(t + 1) * k;
            let ir = &idx[row.clone()];
            let wr = &gh[row.clone()];
            let gr = &dwh[row.clone()];
            let dr = &dropped[row.clone()];
            let kept = |j: usize| if dr[j] == 0 { gr[j] } else { E::zero() };
            if cfg.renormalize {
                let ps = &psel[row];
                let mut sum = E::zero();
                let mut dot = E::zero();
                for j in 0..k {
                    sum += ps[j];
                    dot += kept(j) * wr[j];
                }
                let inv = E::one() / (sum + renorm_eps());
                let a = |j: usize| s * kept(j) - dot;
                let out = &mut sparse[t * e..(t + 1) * e];
                match cfg.score {
                    ScoreFn::Softmax => {
                        let mut mt = E::zero();
                        for j in 0..k {
                            mt += a(j) * (ps[j] * inv);
                        }
                        m[t] = mt;
                        for j in 0..k {
                            out[ir[j] as usize] = a(j) * (ps[j] * inv);
                        }
                    }
                    ScoreFn::Sigmoid => {
                        for j in 0..k {
                            out[ir[j] as usize] = a(j) * (ps[j] * inv) * (E::one() - ps[j]);
                        }
                    }
                }
            } else {
                let out = &mut dp[t * e..(t + 1) * e];
                for j in 0..k {
                    out[ir[j] as usize] += s * kept(j);
                }
            }
        }
        let mut dpt = dx(self.vector(dp)?.try_reshape_like(&(n, e)))?;
        if let Some(l) = lbl {
            let groups = n / l.group_len;
            let shape3 = (groups, l.group_len, e);
            let coef = self.mat("LBL coefficients", l.coef, groups, e)?;
            let coef = dx(coef.try_broadcast_like::<_, Axis<1>>(&shape3))?;
            let d3 = dx(dpt.try_reshape_like(&shape3))?;
            dpt = dx(dx(d3.try_add(coef))?.try_reshape_like(&(n, e)))?;
        }
        let mut dzt = match cfg.score {
            ScoreFn::Softmax => {
                let dot: Tensor<(usize,), E, D> =
                    dx(dx(dpt.clone().try_mul(pt.clone()))?.try_sum::<_, Axis<1>>())?;
                let dot = dx(dot.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
                dx(pt.clone().try_mul(dx(dpt.try_sub(dot))?))?
            }
            ScoreFn::Sigmoid => {
                let one_minus = dx(dx(pt.clone().try_negate())?.try_add(E::one()))?;
                dx(dx(dpt.try_mul(pt.clone()))?.try_mul(one_minus))?
            }
        };
        if cfg.renormalize {
            if cfg.score == ScoreFn::Softmax {
                let mt = dx(self.vector(m)?.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
                dzt = dx(dzt.try_sub(dx(pt.clone().try_mul(mt))?))?;
            }
            let sp = dx(self.vector(sparse)?.try_reshape_like(&(n, e)))?;
            dzt = dx(dzt.try_add(sp))?;
        }
        if z_coef != E::zero() {
            let zt = self.mat("logits", z, n, e)?;
            let lse: Tensor<(usize,), E, D> = dx(zt.clone().try_logsumexp::<_, Axis<1>>())?;
            let c = dx(dx(lse.try_mul(z_coef))?.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
            let sm = match cfg.score {
                ScoreFn::Softmax => pt,
                ScoreFn::Sigmoid => dx(zt.try_softmax::<Axis<1>>())?,
            };
            dzt = dx(dzt.try_add(dx(sm.try_mul(c))?))?;
        }
        *dz = Self::flat(dzt)?;
        Ok(())
    }

    fn group_column_sums(
        &self,
        n: usize,
        cols: usize,
        group_len: usize,
        a: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        if group_len == 0 || n % group_len != 0 {
            return Err(SimbalError::SequenceLength {
                seq_len: group_len,
                tokens: n,
            });
        }
        check_len("matrix", n.saturating_mul(cols), a.shape().0)?;
        let groups = n / group_len;
        check_len("group sums", groups.saturating_mul(cols), out.shape().0)?;
        if n == 0 || cols == 0 {
            *out = self.zeros(groups * cols)?;
            return Ok(());
        }
        let a3 = dx(self
            .mat("matrix", a, n, cols)?
            .try_reshape_like(&(groups, group_len, cols)))?;
        let sums: Matrix<E, D> = dx(a3.try_sum::<_, Axis<1>>())?;
        *out = Self::flat(sums)?;
        Ok(())
    }

    fn lse_sq_sum(&self, n: usize, e: usize, z: &Self::Buf) -> Result<E> {
        check_len("logits", n.saturating_mul(e), z.shape().0)?;
        if n == 0 || e == 0 {
            // An empty row's lse is -inf, like the reference; no rows sum to 0.
            return Ok(if n == 0 { E::zero() } else { E::infinity() });
        }
        let lse: Tensor<(usize,), E, D> =
            dx(self.mat("logits", z, n, e)?.try_logsumexp::<_, Axis<1>>())?;
        let total: Tensor<(), E, D> = dx(dx(lse.try_square())?.try_sum::<_, Axis<0>>())?;
        Self::scalar(&total)
    }

    fn simbal_residual(&self, cfg: &SimBalConfig, e: usize, gram: &mut Self::Buf) -> Result<E> {
        check_len("Gram matrix", e.saturating_mul(e), gram.shape().0)?;
        if e == 0 {
            return Ok(E::zero());
        }
        let lambda = E::of(cfg.lambda);
        let g = dx(self.mat("Gram matrix", gram, e, e)?.try_sub(self.eye(e)?))?;
        let (loss_t, m) = match cfg.norm {
            SimBalNorm::L1 => {
                let ones = dx(self.dev.try_ones_like(&(e, e)))?;
                let neg = dx(ones.clone().try_negate())?;
                let zeros = dx(self.dev.try_zeros_like(&(e, e)))?;
                let pos = dx(g.try_gt(E::zero()))?;
                let negm = dx(g.try_lt(E::zero()))?;
                let sign = dx(pos.try_choose(ones, dx(negm.try_choose(neg, zeros))?))?;
                let l = dx(dx(g.try_abs())?.try_sum::<(), _>())?;
                (l, dx(sign.try_mul(E::of(2.0) * lambda))?)
            }
            SimBalNorm::FrobeniusSq => {
                let l = dx(dx(g.clone().try_square())?.try_sum::<(), _>())?;
                (l, dx(g.try_mul(E::of(4.0) * lambda))?)
            }
            SimBalNorm::ScaleFree => {
                let ee = E::of_usize(e) * E::of_usize(e);
                let l = dx(dx(g.clone().try_square())?.try_sum::<(), _>())?;
                (l, dx(dx(g.try_mul(E::of(4.0) * lambda))?.try_div(ee))?)
            }
        };
        let sum = Self::scalar(&loss_t)?;
        *gram = Self::flat(m)?;
        Ok(match cfg.norm {
            SimBalNorm::ScaleFree => lambda * sum / (E::of_usize(e) * E::of_usize(e)),
            _ => lambda * sum,
        })
    }

    fn normalize_columns(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        r: &Self::Buf,
        norms: &mut Self::Buf,
        rn: &mut Self::Buf,
    ) -> Result<()> {
        check_len("router weight", d.saturating_mul(e), r.shape().0)?;
        check_len("column norms", e, norms.shape().0)?;
        check_len("normalised weight", d.saturating_mul(e), rn.shape().0)?;
        if d == 0 || e == 0 {
            *norms = self.zeros(e)?;
            return Ok(());
        }
        let rt = self.as_dxe("router weight", layout, d, e, r)?;
        let nrm: Tensor<(usize,), E, D> =
            dx(dx(dx(rt.clone().try_square())?.try_sum::<_, Axis<0>>())?.try_sqrt())?;
        let inv = self.safe_recip(nrm.clone())?;
        let inv = dx(inv.try_broadcast_like::<_, Axis<0>>(&(d, e)))?;
        *rn = Self::store_layout(layout, dx(rt.try_mul(inv))?)?;
        *norms = nrm;
        Ok(())
    }

    fn scale_free_project(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        rn: &Self::Buf,
        norms: &Self::Buf,
        g: &Self::Buf,
        grad: &mut Self::Buf,
    ) -> Result<()> {
        check_len("normalised weight", d.saturating_mul(e), rn.shape().0)?;
        check_len("column norms", e, norms.shape().0)?;
        check_len("normalised gradient", d.saturating_mul(e), g.shape().0)?;
        check_len("router gradient", d.saturating_mul(e), grad.shape().0)?;
        if d == 0 || e == 0 {
            return Ok(());
        }
        let rnt = self.as_dxe("normalised weight", layout, d, e, rn)?;
        let gt = self.as_dxe("normalised gradient", layout, d, e, g)?;
        let old = self.as_dxe("router gradient", layout, d, e, grad)?;
        let dot: Tensor<(usize,), E, D> =
            dx(dx(rnt.clone().try_mul(gt.clone()))?.try_sum::<_, Axis<0>>())?;
        let dot = dx(dot.try_broadcast_like::<_, Axis<0>>(&(d, e)))?;
        let inv = self.safe_recip(norms.clone())?;
        let inv = dx(inv.try_broadcast_like::<_, Axis<0>>(&(d, e)))?;
        let v = dx(dx(gt.try_sub(dx(rnt.try_mul(dot))?))?.try_mul(inv))?;
        *grad = Self::store_layout(layout, dx(old.try_add(v))?)?;
        Ok(())
    }

    fn routing_entropy(&self, n: usize, e: usize, p: &Self::Buf) -> Result<E> {
        simbal_core::shape::check_dims(n, 1, e)?;
        check_len("scores", n.saturating_mul(e), p.shape().0)?;
        let pt = self.mat("scores", p, n, e)?;
        let s: Tensor<(usize,), E, D> = dx(pt.clone().try_sum::<_, Axis<1>>())?;
        let s = dx(s.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
        let valid = dx(s.try_gt(E::zero()))?;
        let q = dx(pt.try_div(s))?;
        let zeros = dx(self.dev.try_zeros_like(&(n, e)))?;
        let ones = dx(self.dev.try_ones_like(&(n, e)))?;
        let q = dx(valid.try_choose(q, zeros))?;
        let pos = dx(q.try_gt(E::zero()))?;
        // Masked entries become 1, whose `q ln q` is 0.
        let safe = dx(pos.try_choose(q, ones))?;
        let h = dx(safe.clone().try_mul(dx(safe.try_ln())?))?;
        let total: Tensor<(), E, D> = dx(h.try_sum::<(), _>())?;
        let h = -Self::scalar(&total)? / E::of_usize(n);
        if h.is_finite() {
            Ok(h)
        } else {
            Err(SimbalError::Overflow {
                what: "routing entropy",
            })
        }
    }

    /// `max |x|` by dfdx reductions; dfdx's max skips NaN, so NaNs are counted separately.
    fn max_abs(&self, buf: &Self::Buf) -> Result<E> {
        let len = buf.shape().0;
        if len == 0 {
            return Ok(E::zero());
        }
        let nan = dx(buf.try_ne(buf))?;
        let ones = dx(self.dev.try_ones_like(&(len,)))?;
        let zeros = dx(self.dev.try_zeros_like(&(len,)))?;
        let nans: Tensor<(), E, D> = dx(dx(nan.try_choose(ones, zeros))?.try_sum::<(), _>())?;
        if Self::scalar(&nans)? > E::zero() {
            return Ok(E::nan());
        }
        let m: Tensor<(), E, D> = dx(dx(buf.clone().try_abs())?.try_max::<(), _>())?;
        Self::scalar(&m)
    }
}

impl<E: Scalar + Dtype, D: Device<E>> Dfdx<E, D> {
    /// `1 / x` where `x > 0`, else 0 (a zero column stays zero).
    fn safe_recip(&self, x: Tensor<(usize,), E, D>) -> Result<Tensor<(usize,), E, D>> {
        let len = x.shape().0;
        let pos = dx(x.try_gt(E::zero()))?;
        let zeros = dx(self.dev.try_zeros_like(&(len,)))?;
        dx(pos.try_choose(dx(x.try_recip())?, zeros))
    }
}
