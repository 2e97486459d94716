//! dfdx tensors in and out: the router weight as a dfdx tensor in either layout, gates and
//! indices as tensors, and simbal's gradients added into a dfdx [`Gradients`] so a dfdx optimiser
//! (Adam, SGD, RMSprop) applies them.
//!
//! Shapes are checked at run time and reported as [`SimbalError`]s, so const-shaped tensors (a
//! module's `Rank2<O, I>` weight) and run-time-shaped ones work alike.

use crate::backend::{dx, Dfdx, Matrix, Vector};
use dfdx::shapes::{Dim, Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Gradients, NoneTape, Tensor, Trace};
use dfdx::tensor_ops::{Backward, Device, ReshapeTo, SumTo, TryMul};
use simbal_core::{
    simbal_loss, Backend, LossConfig, LossValues, Result, Router, RoutingStats, Scalar,
    SimBalConfig, SimbalError, SimbalWorkspace, WeightLayout,
};

/// A 2-D tensor of dims `R x C` (a router weight or its gradient), const or run-time.
pub type Weight<E, D, R, C> = Tensor<(R, C), E, D>;

/// `(rows, cols)` of a `d x e` router weight stored in `layout`: `(d, e)` for
/// [`WeightLayout::DxE`], `(e, d)` for [`WeightLayout::ExD`] (PyTorch's and dfdx's `Linear`).
pub fn weight_shape(layout: WeightLayout, d: usize, e: usize) -> (usize, usize) {
    match layout {
        WeightLayout::DxE => (d, e),
        WeightLayout::ExD => (e, d),
    }
}

impl<E: Scalar + Dtype, D: Device<E>> Dfdx<E, D> {
    /// Any dfdx tensor (any shape, any tape) as a backend buffer, flattened row-major. Shares the
    /// tensor's memory when it is contiguous; a strided view (permuted, broadcast) is copied.
    pub fn buf_from_tensor<S: Shape, T>(&self, t: &Tensor<S, E, D, T>) -> Result<Vector<E, D>> {
        Self::flat(t.retaped::<NoneTape>())
    }

    /// A backend buffer as a tensor of `shape` (its element count must match). Shares memory.
    pub fn tensor_from_buf<S: Shape>(
        &self,
        buf: &Vector<E, D>,
        shape: S,
    ) -> Result<Tensor<S, E, D>> {
        simbal_core::shape::check_len("tensor", shape.num_elements(), buf.shape().0)?;
        dx(buf.clone().try_reshape_like(&shape))
    }

    /// An index buffer (`rows x cols`) as a dfdx `usize` tensor, ready for `gather` / `select`.
    pub fn index_tensor(
        &self,
        idx: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<(usize, usize), usize, D>> {
        let len = rows.checked_mul(cols).ok_or(SimbalError::LengthMismatch {
            what: "index tensor",
            expected: usize::MAX,
            got: idx.len(),
        })?;
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
    let wb = be.buf_from_tensor(w)?;
    let mut grad = be.zeros(rows * cols)?;
    let mut ws = SimbalWorkspace::new(be, d, e)?;
    let loss = simbal_loss(be, cfg, layout, d, e, &wb, Some(&mut grad), &mut ws)?;
    Ok((loss, be.tensor_from_buf(&grad, *w.shape())?))
}

/// A [`Router`] on the dfdx backend driven by dfdx tensors: forward and backward take the tokens
/// `X` (`n x d`) and the router weight (`d x E` or `E x d` per the router's
/// [`simbal_core::RouterConfig::layout`]) as tensors, and the results come back as tensors.
pub trait RouterTensors<E: Dtype, D: Device<E>> {
    /// [`Router::forward`] from tensors; the weight's shape is checked against the layout.
    fn forward_tensors<N: Dim, K: Dim, R: Dim, C: Dim, T1, T2>(
        &mut self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
        bias: Option<&Vector<E, D>>,
    ) -> Result<()>;

    /// [`Router::backward`] from tensors, with the gate gradient `dw` (`n x k`).
    fn backward_tensors<N: Dim, K: Dim, R: Dim, C: Dim, A: Dim, B: Dim, T1, T2, T3>(
        &mut self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
        dw: &Tensor<(A, B), E, D, T3>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<E>>;

    /// Gates of the last forward pass, `n x k`.
    fn gates_tensor(&self) -> Result<Matrix<E, D>>;
    /// Scores of the last forward pass, `n x E`.
    fn scores_tensor(&self) -> Result<Matrix<E, D>>;
    /// Chosen experts of the last forward pass, `n x k`, as `usize` for dfdx's `gather`.
    fn indices_tensor(&self) -> Result<Tensor<(usize, usize), usize, D>>;
    /// The gates scattered into an `n x E` matrix (zero where an expert was not chosen or the
    /// assignment was dropped): `y = sum_e G[:, e] * expert_e(X)` combines dense expert outputs.
    fn dense_gates_tensor(&self) -> Result<Matrix<E, D>>;
    /// `dL/dX` of the last backward pass, `n x d`.
    fn dx_tensor(&self) -> Result<Matrix<E, D>>;
    /// `dL/dW` of the last backward pass in the shape (and type) of the weight `w`.
    fn dw_like<R: Dim, C: Dim, T>(
        &self,
        w: &Tensor<(R, C), E, D, T>,
    ) -> Result<Tensor<(R, C), E, D>>;
    /// Adds `dL/dW` of the last backward pass into `grads` for the weight `w` (see
    /// [`add_to_gradients`] for dfdx's rules on which gradients survive).
    fn add_weight_grad<R: Dim, C: Dim, T>(
        &self,
        grads: &mut Gradients<E, D>,
        w: &Tensor<(R, C), E, D, T>,
    ) -> Result<()>;
}

/// `(n, k)` of the router's last forward pass.
fn nk<E: Scalar + Dtype, D: Device<E>>(router: &Router<Dfdx<E, D>>) -> Result<(usize, usize)> {
    let k = router.config().k;
    Ok((router.indices()?.len() / k.max(1), k))
}

/// Checks `x` is `n x d` and `w` matches the router's layout; returns `(n, d)`.
fn check_xw<E: Scalar + Dtype, D: Device<E>, N: Dim, K: Dim, R: Dim, C: Dim, T1, T2>(
    router: &Router<Dfdx<E, D>>,
    x: &Tensor<(N, K), E, D, T1>,
    w: &Tensor<(R, C), E, D, T2>,
) -> Result<(usize, usize)> {
    let (n, d) = (x.shape().0.size(), x.shape().1.size());
    let e = router.config().experts;
    let want = weight_shape(router.config().layout, d, e);
    let got = (w.shape().0.size(), w.shape().1.size());
    if want != got {
        return Err(SimbalError::LengthMismatch {
            what: "router weight (rows x cols for the configured layout and X's width)",
            expected: want.0 * want.1,
            got: got.0 * got.1,
        });
    }
    Ok((n, d))
}

impl<E: Scalar + Dtype, D: Device<E>> RouterTensors<E, D> for Router<Dfdx<E, D>> {
    fn forward_tensors<N: Dim, K: Dim, R: Dim, C: Dim, T1, T2>(
        &mut self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
        bias: Option<&Vector<E, D>>,
    ) -> Result<()> {
        let (n, d) = check_xw(self, x, w)?;
        let be = self.backend();
        let xb = be.buf_from_tensor(x)?;
        let wb = be.buf_from_tensor(w)?;
        self.forward(&xb, &wb, bias, n, d)
    }

    fn backward_tensors<N: Dim, K: Dim, R: Dim, C: Dim, A: Dim, B: Dim, T1, T2, T3>(
        &mut self,
        x: &Tensor<(N, K), E, D, T1>,
        w: &Tensor<(R, C), E, D, T2>,
        dw: &Tensor<(A, B), E, D, T3>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<LossValues<E>> {
        check_xw(self, x, w)?;
        let be = self.backend();
        let xb = be.buf_from_tensor(x)?;
        let wb = be.buf_from_tensor(w)?;
        let dwb = be.buf_from_tensor(dw)?;
        self.backward(&xb, &wb, &dwb, losses, global)
    }

    fn gates_tensor(&self) -> Result<Matrix<E, D>> {
        let (n, k) = nk(self)?;
        self.backend().tensor_from_buf(self.gates()?, (n, k))
    }

    fn scores_tensor(&self) -> Result<Matrix<E, D>> {
        let (n, _) = nk(self)?;
        let e = self.config().experts;
        self.backend().tensor_from_buf(self.scores()?, (n, e))
    }

    fn indices_tensor(&self) -> Result<Tensor<(usize, usize), usize, D>> {
        let (n, k) = nk(self)?;
        self.backend().index_tensor(self.indices()?, n, k)
    }

    fn dense_gates_tensor(&self) -> Result<Matrix<E, D>> {
        let (n, k) = nk(self)?;
        let e = self.config().experts;
        let be = self.backend();
        let mut gates = vec![E::zero(); n * k];
        be.download(self.gates()?, &mut gates)?;
        let idx = self.indices()?;
        let dropped = self.dropped()?;
        let mut dense = vec![E::zero(); n * e];
        for (a, (&i, &w)) in idx.iter().zip(&gates).enumerate() {
            if dropped[a] == 0 && (i as usize) < e {
                dense[(a / k) * e + i as usize] = w;
            }
        }
        dx(be.device().try_tensor_from_vec(dense, (n, e)))
    }

    fn dx_tensor(&self) -> Result<Matrix<E, D>> {
        let (n, _) = nk(self)?;
        let g = self.dx()?;
        let d = g.shape().0 / n.max(1);
        self.backend().tensor_from_buf(g, (n, d))
    }

    fn dw_like<R: Dim, C: Dim, T>(
        &self,
        w: &Tensor<(R, C), E, D, T>,
    ) -> Result<Tensor<(R, C), E, D>> {
        self.backend().tensor_from_buf(self.dr()?, *w.shape())
    }

    fn add_weight_grad<R: Dim, C: Dim, T>(
        &self,
        grads: &mut Gradients<E, D>,
        w: &Tensor<(R, C), E, D, T>,
    ) -> Result<()> {
        let g = self.dw_like(w)?;
        add_to_gradients(grads, w, &g)
    }
}
