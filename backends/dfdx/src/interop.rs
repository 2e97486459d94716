//! dfdx tensors in and out: the router weight as a dfdx tensor in either layout, the routing as
//! tensors for the expert combine, and simbal's gradients added into a dfdx [`Gradients`] so a
//! dfdx optimiser (Adam, SGD, RMSprop) applies them.
//!
//! A step on tensors: [`RouterTensors::tensor_inputs`] checks `X` and the weight against the
//! router's configuration and holds them as buffers, [`RouterTensors::forward_tensors`] routes
//! them into a [`Pass`] (its routing as tensors through [`RoutingTensors`]),
//! [`PassTensors::backward_tensors`] takes the gate gradient as a tensor, and the returned
//! gradients come back as tensors through [`GradientTensors`].
//!
//! Shapes are checked at run time and reported as [`SimbalError`]s, so const-shaped tensors (a
//! module's `Rank2<O, I>` weight) and run-time-shaped ones work alike.
//!
//! ```
//! use dfdx::shapes::HasShape;
//! use dfdx::tensor::{Cpu, Tensor, TensorFromVec};
//! use simbal_core::{LossConfig, Router, RouterConfig, WeightLayout};
//! use simbal_dfdx::{Dfdx, GradientTensors, PassTensors, RouterTensors, RoutingTensors};
//! let be = Dfdx::<f64>::cpu();
//! let dev = be.device().clone();
//! let (n, d, e, k) = (4, 3, 3, 2);
//! let x: Tensor<(usize, usize), f64, Cpu> =
//!     dev.tensor_from_vec((0..n * d).map(|i| (i as f64 * 0.7).sin()).collect(), (n, d));
//! // An `E x D` weight, as dfdx's `Linear` stores it: the identity is orthogonal.
//! let w: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(
//!     (0..e * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect(),
//!     (e, d),
//! );
//! let cfg = RouterConfig::new(e, k).with_layout(WeightLayout::ExD);
//! let mut router = Router::new(be, cfg)?;
//! let inputs = router.tensor_inputs(&x, &w)?;
//! let mut pass = router.forward_tensors(&inputs, None)?;
//! assert_eq!(pass.dense_gates_tensor()?.as_vec().len(), n * e);
//! let dw: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(vec![1.0; n * k], (n, k));
//! let g = pass.backward_tensors(&dw, &LossConfig::simbal(), None)?;
//! assert!(g.losses.simbal.abs() < 1e-12);
//! assert_eq!(g.dr_like(&w)?.shape(), w.shape());
//! # Ok::<(), simbal_core::SimbalError>(())
//! ```

use crate::backend::{dx, Dfdx, Matrix, Vector};
use dfdx::shapes::{Dim, Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Gradients, NoneTape, Tensor, Trace};
use dfdx::tensor_ops::{Backward, Device, ReshapeTo, SumTo, TryMul};
use simbal_core::{
    simbal_loss, Gradients as SimbalGradients, LossConfig, Memory, Pass, Result, Router, Routing,
    RoutingStats, Scalar, SimBalConfig, SimbalError, SimbalWorkspace, WeightLayout,
};

/// A 2-D tensor of dims `R x C` (a router weight or its gradient), const or run-time.
pub type Weight<E, D, R, C> = Tensor<(R, C), E, D>;

/// An index tensor (`rows x cols` of `usize`), as dfdx's `gather` and `select` take.
pub type IndexMatrix<D> = Tensor<(usize, usize), usize, D>;

/// `(rows, cols)` of a `d x e` router weight stored in `layout`: `(d, e)` for
/// [`WeightLayout::DxE`], `(e, d)` for [`WeightLayout::ExD`] (PyTorch's and dfdx's `Linear`).
pub fn weight_shape(layout: WeightLayout, d: usize, e: usize) -> (usize, usize) {
    match layout {
        WeightLayout::DxE => (d, e),
        WeightLayout::ExD => (e, d),
    }
}

/// Any tensor flattened row-major into a buffer (shares a contiguous tensor's memory).
fn to_vector<S: Shape, E: Scalar + Dtype, D: Device<E>, T>(
    t: &Tensor<S, E, D, T>,
) -> Result<Vector<E, D>> {
    Dfdx::flat(t.retaped::<NoneTape>())
}

/// A buffer as a tensor of `shape`; its element count must match.
fn reshaped<S: Shape, E: Scalar + Dtype, D: Device<E>>(
    buf: &Vector<E, D>,
    shape: S,
) -> Result<Tensor<S, E, D>> {
    simbal_core::shape::check_len("tensor", shape.num_elements(), buf.shape().0)?;
    dx(buf.clone().try_reshape_like(&shape))
}

impl<E: Scalar + Dtype, D: Device<E>> Dfdx<E, D> {
    /// Any dfdx tensor (any shape, any tape) as a backend buffer, flattened row-major. Shares the
    /// tensor's memory when it is contiguous; a strided view (permuted, broadcast) is copied.
    ///
    /// # Errors
    /// A dfdx failure while copying a strided view.
    pub fn buf_from_tensor<S: Shape, T>(&self, t: &Tensor<S, E, D, T>) -> Result<Vector<E, D>> {
        to_vector(t)
    }

    /// A backend buffer as a tensor of `shape`. Shares memory.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `shape` does not hold the buffer's length.
    pub fn tensor_from_buf<S: Shape>(
        &self,
        buf: &Vector<E, D>,
        shape: S,
    ) -> Result<Tensor<S, E, D>> {
        reshaped(buf, shape)
    }

    /// An index buffer (`rows x cols`) as a dfdx `usize` tensor, ready for `gather` / `select`.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] unless `idx` holds `rows x cols`.
    pub fn index_tensor(&self, idx: &[u32], rows: usize, cols: usize) -> Result<IndexMatrix<D>> {
        let len = simbal_core::shape::product("index tensor", rows, cols)?;
        simbal_core::shape::check_len("index tensor", len, idx.len())?;
        dx(self
            .device()
            .try_tensor_from_vec(idx.iter().map(|&i| i as usize).collect(), (rows, cols)))
    }
}

/// Adds `g` into the gradient `grads` holds for `param`, on any dfdx device, so an optimiser
/// update applies it. `g` must have `param`'s shape.
///
/// dfdx 0.13 offers no public way to add into a gradient buffer on a generic device, so this
/// records `sum(param * g)` on a tape over `grads` and runs its backward pass, which adds exactly
/// `g` (`1 * g`). Two dfdx rules follow: `param` must be a leaf of `grads` (allocated by
/// `alloc_grads` of the module holding it) or `grads` must be leaky (`Gradients::leaky()`),
/// otherwise dfdx drops the new gradient as a temporary; with leaky gradients the temporaries of
/// this call stay in the map. On the [`Cpu`] device prefer [`add_to_gradients_cpu`], which adds
/// in place. If the device fails midway, `grads` is left empty.
///
/// # Errors
/// [`SimbalError::Backend`] when the shapes differ or dfdx fails.
pub fn add_to_gradients<S: Shape, E: Dtype, D: Device<E>, T>(
    grads: &mut Gradients<E, D>,
    param: &Tensor<S, E, D, T>,
    g: &Tensor<S, E, D>,
) -> Result<()> {
    if param.shape() != g.shape() {
        return Err(SimbalError::Backend {
            message: format!(
                "gradient shape {:?} does not match the parameter's {:?}",
                g.shape(),
                param.shape()
            ),
        });
    }
    let taken = std::mem::replace(grads, Gradients::leaky());
    let traced = param.retaped::<NoneTape>().traced(taken);
    let prod = dx(traced.try_mul(g.clone()))?;
    let total = dx(prod.try_sum::<(), S::AllAxes>())?;
    *grads = dx(total.try_backward())?;
    Ok(())
}

/// Adds `g` (row-major, `param`'s element count) into the gradient `grads` holds for `param` on
/// the [`Cpu`] device, in place through `Gradients::get_or_alloc_mut` (allocating a zero gradient
/// first if there is none). `param` must be contiguous, as every dfdx module parameter is.
///
/// # Errors
/// [`SimbalError::LengthMismatch`] unless `g` has `param`'s element count;
/// [`SimbalError::Backend`] for a non-contiguous `param` or a dfdx failure.
pub fn add_to_gradients_cpu<S: Shape, E: Dtype, T>(
    grads: &mut Gradients<E, Cpu>,
    param: &Tensor<S, E, Cpu, T>,
    g: &[E],
) -> Result<()> {
    let numel = param.shape().num_elements();
    simbal_core::shape::check_len("parameter gradient", numel, g.len())?;
    let buf: &mut Vec<E> = &mut *dx(grads.get_or_alloc_mut(param))?;
    if buf.len() != numel {
        return Err(SimbalError::Backend {
            message: String::from(
                "the parameter is not contiguous in memory (a broadcast or strided view)",
            ),
        });
    }
    for (b, &v) in buf.iter_mut().zip(g) {
        *b += v;
    }
    Ok(())
}

/// SimBal of a router weight given as a dfdx tensor stored in `layout` (`d x e` or `e x d`):
/// returns the loss and `dL/dW` as a tensor of the weight's shape, ready for
/// [`add_to_gradients`] or [`add_to_gradients_cpu`].
///
/// # Errors
/// As [`simbal_loss`]; [`SimbalError::ZeroDim`] for an empty weight.
pub fn simbal_loss_tensor<E: Scalar + Dtype, D: Device<E>, R: Dim, C: Dim, T>(
    be: &Dfdx<E, D>,
    cfg: &SimBalConfig,
    layout: WeightLayout,
    w: &Tensor<(R, C), E, D, T>,
) -> Result<(E, Weight<E, D, R, C>)> {
    let (rows, cols) = (w.shape().0.size(), w.shape().1.size());
    let (d, e) = match layout {
        WeightLayout::DxE => (rows, cols),
        WeightLayout::ExD => (cols, rows),
    };
    let wb = to_vector(w)?;
    let mut grad = be.zeros(rows * cols)?;
    let mut ws = SimbalWorkspace::new(be, layout, d, e)?;
    let loss = simbal_loss(be, cfg, &wb, Some(&mut grad), &mut ws)?;
    Ok((loss, reshaped(&grad, *w.shape())?))
}

/// Tokens `X` (`n x d`) and the router weight as backend buffers, their shapes checked against
/// a router's configuration: what [`RouterTensors::forward_tensors`] routes. Holding them here
/// lets the returned [`Pass`] borrow them until its backward.
#[derive(Debug, Clone)]
pub struct RouterInputs<E: Dtype, D: Device<E>> {
    x: Vector<E, D>,
    w: Vector<E, D>,
}

impl<E: Dtype, D: Device<E>> RouterInputs<E, D> {
    /// The tokens, flattened row-major.
    pub fn x(&self) -> &Vector<E, D> {
        &self.x
    }
    /// The router weight, flattened in its layout.
    pub fn w(&self) -> &Vector<E, D> {
        &self.w
    }
}

/// A [`Router`] on the dfdx backend driven by dfdx tensors.
pub trait RouterTensors<E: Scalar + Dtype, D: Device<E>> {
    /// Tokens `x` (`n x d`) and the router weight `w` (`d x E` or `E x d` per the router's
    /// [`simbal_core::RouterConfig::layout`]) as buffers (shared when contiguous).
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `w`'s shape is not the configured layout's for
    /// `x`'s width; a dfdx failure while copying a strided tensor.
    fn tensor_inputs<N: Dim, K: Dim, R: Dim, C: Dim, T1, T2>(
        &self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
    ) -> Result<RouterInputs<E, D>>;

    /// [`Router::forward`] of checked tensor inputs.
    ///
    /// # Errors
    /// As [`Router::forward`].
    fn forward_tensors<'a>(
        &'a mut self,
        inputs: &'a RouterInputs<E, D>,
        bias: Option<&Vector<E, D>>,
    ) -> Result<Pass<'a, Dfdx<E, D>>>;
}

impl<E: Scalar + Dtype, D: Device<E>> RouterTensors<E, D> for Router<Dfdx<E, D>> {
    fn tensor_inputs<N: Dim, K: Dim, R: Dim, C: Dim, T1, T2>(
        &self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
    ) -> Result<RouterInputs<E, D>> {
        let d = x.shape().1.size();
        let cfg = self.config();
        let want = weight_shape(cfg.layout, d, cfg.experts);
        let got = (w.shape().0.size(), w.shape().1.size());
        if want != got {
            return Err(SimbalError::LengthMismatch {
                what: "router weight (rows x cols for the configured layout and X's width)",
                expected: want.0.saturating_mul(want.1),
                got: got.0.saturating_mul(got.1),
            });
        }
        Ok(RouterInputs {
            x: to_vector(x)?,
            w: to_vector(w)?,
        })
    }

    fn forward_tensors<'a>(
        &'a mut self,
        inputs: &'a RouterInputs<E, D>,
        bias: Option<&Vector<E, D>>,
    ) -> Result<Pass<'a, Dfdx<E, D>>> {
        self.forward(&inputs.x, &inputs.w, bias)
    }
}

/// The routing of a pass as dfdx tensors (a [`Pass`] derefs to its [`Routing`]).
pub trait RoutingTensors<E: Scalar + Dtype, D: Device<E>> {
    /// Gates, `n x k`.
    ///
    /// # Errors
    /// A dfdx failure.
    fn gates_tensor(&self) -> Result<Matrix<E, D>>;
    /// Scores, `n x E`.
    ///
    /// # Errors
    /// A dfdx failure.
    fn scores_tensor(&self) -> Result<Matrix<E, D>>;
    /// Chosen experts, `n x k`, as `usize` for dfdx's `gather`.
    ///
    /// # Errors
    /// A dfdx failure.
    fn indices_tensor(&self) -> Result<IndexMatrix<D>>;
    /// The gates scattered into an `n x E` matrix (zero where an expert was not chosen or the
    /// assignment was dropped): `y = sum_e G[:, e] * expert_e(X)` combines dense expert outputs.
    ///
    /// # Errors
    /// A dfdx failure.
    fn dense_gates_tensor(&self) -> Result<Matrix<E, D>>;
}

impl<E: Scalar + Dtype, D: Device<E>> RoutingTensors<E, D> for Routing<Dfdx<E, D>> {
    fn gates_tensor(&self) -> Result<Matrix<E, D>> {
        let s = self.shape();
        reshaped(self.gates(), (s.n, s.k))
    }

    fn scores_tensor(&self) -> Result<Matrix<E, D>> {
        let s = self.shape();
        reshaped(self.scores(), (s.n, s.e))
    }

    fn indices_tensor(&self) -> Result<IndexMatrix<D>> {
        let s = self.shape();
        let dev = self.gates().device();
        dx(dev.try_tensor_from_vec(
            self.indices().iter().map(|&i| i as usize).collect(),
            (s.n, s.k),
        ))
    }

    fn dense_gates_tensor(&self) -> Result<Matrix<E, D>> {
        let s = self.shape();
        let (n, e, k) = (s.n, s.e, s.k);
        let gates = crate::backend::host_vec(self.gates());
        let mut dense = vec![E::zero(); n * e];
        let kept = self.indices().iter().zip(self.dropped()).zip(&gates);
        for (a, ((&i, &dropped), &w)) in kept.enumerate() {
            if dropped == 0 && (i as usize) < e {
                dense[(a / k) * e + i as usize] = w;
            }
        }
        dx(self.gates().device().try_tensor_from_vec(dense, (n, e)))
    }
}

/// [`Pass::backward`] with the gate gradient as a tensor.
pub trait PassTensors<E: Scalar + Dtype, D: Device<E>> {
    /// Backward from the gate gradient `dw` (`n x k`, any dims) and the configured losses.
    ///
    /// # Errors
    /// As [`Pass::backward`].
    fn backward_tensors<A: Dim, B: Dim, T>(
        &mut self,
        dw: &Tensor<(A, B), E, D, T>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<SimbalGradients<'_, Dfdx<E, D>>>;
}

impl<E: Scalar + Dtype, D: Device<E>> PassTensors<E, D> for Pass<'_, Dfdx<E, D>> {
    fn backward_tensors<A: Dim, B: Dim, T>(
        &mut self,
        dw: &Tensor<(A, B), E, D, T>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<SimbalGradients<'_, Dfdx<E, D>>> {
        let dwb = to_vector(dw)?;
        self.backward(&dwb, losses, global)
    }
}

/// The gradients of a backward pass as dfdx tensors.
pub trait GradientTensors<E: Scalar + Dtype, D: Device<E>> {
    /// `dL/dX` in the shape of the tokens `x`.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `x` is not the pass's tokens' shape.
    fn dx_like<S: Shape, T>(&self, x: &Tensor<S, E, D, T>) -> Result<Tensor<S, E, D>>;
    /// `dL/dW` (SimBal's gradient included) in the shape of the weight `w`.
    ///
    /// # Errors
    /// [`SimbalError::LengthMismatch`] when `w` is not the pass's weight's shape.
    fn dr_like<S: Shape, T>(&self, w: &Tensor<S, E, D, T>) -> Result<Tensor<S, E, D>>;
    /// Adds `dL/dW` into `grads` for the weight `w` (see [`add_to_gradients`] for dfdx's rules
    /// on which gradients survive).
    ///
    /// # Errors
    /// As [`GradientTensors::dr_like`] and [`add_to_gradients`].
    fn add_weight_grad<S: Shape, T>(
        &self,
        grads: &mut Gradients<E, D>,
        w: &Tensor<S, E, D, T>,
    ) -> Result<()>;
}

impl<E: Scalar + Dtype, D: Device<E>> GradientTensors<E, D> for SimbalGradients<'_, Dfdx<E, D>> {
    fn dx_like<S: Shape, T>(&self, x: &Tensor<S, E, D, T>) -> Result<Tensor<S, E, D>> {
        reshaped(self.dx, *x.shape())
    }

    fn dr_like<S: Shape, T>(&self, w: &Tensor<S, E, D, T>) -> Result<Tensor<S, E, D>> {
        reshaped(self.dr, *w.shape())
    }

    fn add_weight_grad<S: Shape, T>(
        &self,
        grads: &mut Gradients<E, D>,
        w: &Tensor<S, E, D, T>,
    ) -> Result<()> {
        add_to_gradients(grads, w, &self.dr_like(w)?)
    }
}
