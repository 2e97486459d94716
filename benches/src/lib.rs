//! The benchmark workloads of simbal, shared by the criterion benches and the `compare` timer:
//! the router step of one MoE layer (forward, then backward of
//! `sum(W * dW) + 0.1 SimBal + 0.01 LBL + 1e-3 z-loss`), forward-only routing, and SimBal alone.

#![warn(missing_docs)]

use simbal_core::memory::{view, view_mut};
use simbal_core::{
    Backend, Gemm, GemmArgs, LblConfig, LossConfig, Result, Rng, Router, RouterConfig, Scalar,
    SimBalConfig, SimbalWorkspace, ZLossConfig,
};

/// One router shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Name used in tables and JSON.
    pub name: &'static str,
    /// Tokens.
    pub n: usize,
    /// Model width.
    pub d: usize,
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
}

/// The four router-step shapes of the benchmark issue.
pub const STEP_SHAPES: [StepShape; 4] = [
    StepShape {
        name: "paper-M",
        n: 4096,
        d: 768,
        e: 32,
        k: 4,
    },
    StepShape {
        name: "paper-L",
        n: 4096,
        d: 1536,
        e: 32,
        k: 4,
    },
    StepShape {
        name: "mixtral",
        n: 4096,
        d: 4096,
        e: 8,
        k: 2,
    },
    StepShape {
        name: "deepseek",
        n: 2048,
        d: 7168,
        e: 256,
        k: 8,
    },
];

/// Router weights timed for SimBal alone: `(name, D, E)`.
pub const SIMBAL_SHAPES: [(&str, usize, usize); 3] = [
    ("simbal-768x32", 768, 32),
    ("simbal-1536x32", 1536, 32),
    ("simbal-7168x256", 7168, 256),
];

/// The step's auxiliary losses: SimBal 0.1, LBL 0.01, z-loss 1e-3.
pub fn step_losses() -> LossConfig {
    LossConfig::simbal()
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default())
}

/// FLOPs of the three GEMMs of a step (`Z = XR`, `dX = dZ R^T`, `dR = X^T dZ`) plus SimBal's two.
pub fn step_flops(s: &StepShape) -> f64 {
    let (n, d, e) = (s.n as f64, s.d as f64, s.e as f64);
    6.0 * n * d * e + simbal_flops(s.d, s.e)
}

/// FLOPs of the forward GEMM.
pub fn forward_flops(s: &StepShape) -> f64 {
    2.0 * (s.n * s.d * s.e) as f64
}

/// FLOPs of SimBal with its gradient (`R^T R` and `R M`).
pub fn simbal_flops(d: usize, e: usize) -> f64 {
    4.0 * (d * e * e) as f64
}

/// Bytes a step must move at least: X read for forward, X read and `dX` written for backward.
pub fn step_bytes<T>(s: &StepShape) -> f64 {
    3.0 * (s.n * s.d * core::mem::size_of::<T>()) as f64
}

/// Inputs of one step on a backend: `X ~ N(0,1)`, `R ~ N(0, 1/D)`, `dW ~ N(0,1)`.
pub struct StepInputs<B: Backend> {
    /// Tokens, `N x D`.
    pub x: B::Buf,
    /// Router weight, `D x E`.
    pub r: B::Buf,
    /// Gate gradient, `N x k`.
    pub dw: B::Buf,
}

impl<B: Backend> StepInputs<B> {
    /// Seeded inputs for `shape`.
    pub fn new(b: &B, s: &StepShape, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut host = |len: usize, std: f64| {
            let mut v = vec![B::Elem::of(0.0); len];
            rng.fill_normal(std, &mut v);
            v
        };
        let x = host(s.n * s.d, 1.0);
        let r = host(s.d * s.e, 1.0 / (s.d as f64).sqrt());
        let dw = host(s.n * s.k, 1.0);
        Ok(Self {
            x: b.upload(&x)?,
            r: b.upload(&r)?,
            dw: b.upload(&dw)?,
        })
    }

    /// The inputs `benches/anchors/dump_inputs.py` wrote for `shape` into `dir` (raw
    /// little-endian `f32`: `<name>.x.f32`, `.r.f32`, `.dw.f32`), so simbal times the very
    /// numbers the PyTorch and JAX anchors time. SimBal-only shapes (`n = 0`) read `R` alone.
    pub fn from_dir(b: &B, s: &StepShape, dir: &std::path::Path) -> std::io::Result<Self> {
        let read = |part: &str, len: usize| -> std::io::Result<Vec<B::Elem>> {
            let path = dir.join(format!("{}.{part}.f32", s.name));
            let bytes = std::fs::read(&path)?;
            if bytes.len() != 4 * len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {} bytes, expected {}",
                        path.display(),
                        bytes.len(),
                        4 * len
                    ),
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|c| B::Elem::of(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
                .collect())
        };
        let io = |e: simbal_core::SimbalError| std::io::Error::other(e.to_string());
        let r = read("r", s.d * s.e)?;
        let (x, dw) = if s.n == 0 {
            (Vec::new(), Vec::new())
        } else {
            (read("x", s.n * s.d)?, read("dw", s.n * s.k)?)
        };
        Ok(Self {
            x: b.upload(&x).map_err(io)?,
            r: b.upload(&r).map_err(io)?,
            dw: b.upload(&dw).map_err(io)?,
        })
    }
}

/// A router for `shape`: softmax, renormalised top-k, no capacity, `D x E`, input checks on.
pub fn step_router<B: Backend>(b: B, s: &StepShape) -> Result<Router<B>> {
    Router::new(b, RouterConfig::new(s.e, s.k))
}

/// One training step: forward, then backward with [`step_losses`]; returns the total aux loss.
/// `N` and `D` come from the inputs' lengths.
///
/// # Errors
/// The router's errors.
pub fn run_step<B: Backend>(
    router: &mut Router<B>,
    inp: &StepInputs<B>,
    losses: &LossConfig,
) -> Result<B::Elem> {
    let mut pass = router.forward(view::<B>(&inp.x), view::<B>(&inp.r), None)?;
    let grads = pass.backward(view::<B>(&inp.dw), losses, None)?;
    Ok(grads.losses.total)
}

/// [`run_step`] with a token mask (`N`, 1 = valid): what padding costs.
///
/// # Errors
/// The router's errors.
pub fn run_step_masked<B: Backend>(
    router: &mut Router<B>,
    inp: &StepInputs<B>,
    mask: &B::IdxView,
    losses: &LossConfig,
) -> Result<B::Elem> {
    let batch = simbal_core::Batch::new().mask(mask);
    let mut pass = router.forward_batch(view::<B>(&inp.x), view::<B>(&inp.r), batch)?;
    let grads = pass.backward(view::<B>(&inp.dw), losses, None)?;
    Ok(grads.losses.total)
}

/// Forward-only routing (inference).
///
/// # Errors
/// The router's errors.
pub fn run_forward<B: Backend>(router: &mut Router<B>, inp: &StepInputs<B>) -> Result<()> {
    router.forward(view::<B>(&inp.x), view::<B>(&inp.r), None)?;
    Ok(())
}

/// SimBal (L1, 0.1) of `r` with its gradient into `grad`; the weight's shape is `ws`'s.
///
/// # Errors
/// [`simbal_core::simbal_loss`]'s errors.
pub fn run_simbal<B: Backend>(
    b: &B,
    r: &B::Buf,
    grad: &mut B::Buf,
    ws: &mut SimbalWorkspace<B>,
) -> Result<B::Elem> {
    simbal_core::simbal_loss(
        b,
        &SimBalConfig::default(),
        view::<B>(r),
        Some(view_mut::<B>(grad)),
        ws,
    )
}

/// The floor: the step's three GEMMs alone on the same backend (`Z = XR`, `dX = Z R^T`,
/// `dR = X^T Z`, with `Z` standing in for `dZ`).
pub struct GemmFloor<B: Backend> {
    z: B::Buf,
    dx: B::Buf,
    dr: B::Buf,
}

impl<B: Backend> GemmFloor<B> {
    /// Buffers for `shape`.
    pub fn new(b: &B, s: &StepShape) -> Result<Self> {
        Ok(Self {
            z: b.zeros(s.n * s.e)?,
            dx: b.zeros(s.n * s.d)?,
            dr: b.zeros(s.d * s.e)?,
        })
    }

    /// Runs the three GEMMs once, in the step's order (`dR` before `dX`, so `X` is read twice
    /// in a row while it may be cached).
    ///
    /// # Errors
    /// Lengths that do not fit `shape`; backend failures.
    pub fn run(&mut self, b: &B, inp: &StepInputs<B>, s: &StepShape) -> Result<()> {
        let (x, r) = (view::<B>(&inp.x), view::<B>(&inp.r));
        let Self { z, dx, dr } = self;
        gemm(b, Gemm::new(s.n, s.e, s.d), x, r, view_mut::<B>(z))?;
        let z = view::<B>(z);
        gemm(b, Gemm::new(s.d, s.e, s.n).ta(), x, z, view_mut::<B>(dr))?;
        gemm(b, Gemm::new(s.n, s.d, s.e).tb(), z, r, view_mut::<B>(dx))
    }
}

/// `c = op(a) op(b)` through the backend's checked GEMM.
fn gemm<B: Backend>(b: &B, g: Gemm, a: &B::View, bb: &B::View, c: &mut B::View) -> Result<()> {
    b.gemm(
        GemmArgs {
            gemm: g,
            a,
            b: bb,
            c,
        }
        .check(b)?,
    )
}

/// The memory floor of a step: the bytes [`step_bytes`] counts, moved at this machine's rate on
/// the current rayon pool. One read of `X` (the forward's `X R`) and one copy of `X` into a
/// buffer of `dX`'s size (the backward reads `X` for `dR` and writes `dX`). Skinny shapes
/// (`E = 8`) are bound by this rather than by their FLOPs.
pub struct ByteFloor<T> {
    dx: Vec<T>,
}

impl<T: Scalar> ByteFloor<T> {
    /// A `dX`-sized buffer for `shape`.
    pub fn new(s: &StepShape) -> Self {
        Self {
            dx: vec![T::zero(); s.n * s.d],
        }
    }

    /// Reads `x` once, then copies it into the `dX` buffer; returns a value derived from every
    /// element read so the read cannot be optimised away.
    pub fn run(&mut self, x: &[T]) -> T {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let seen = x
            .par_chunks(CHUNK)
            .map(|c| {
                // Lanes of maxima: vectorised, no early exit, touches every element.
                let mut acc = [T::zero(); 8];
                for w in c.chunks(8) {
                    for (a, &v) in acc.iter_mut().zip(w) {
                        *a = if v > *a { v } else { *a };
                    }
                }
                acc.iter()
                    .fold(T::zero(), |m, &v| if v > m { v } else { m })
            })
            .reduce(T::zero, |a, b| if b > a { b } else { a });
        self.dx
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        seen
    }
}

/// Looks a step shape up by name.
pub fn step_shape(name: &str) -> Option<StepShape> {
    STEP_SHAPES.iter().copied().find(|s| s.name == name)
}

/// The router step through simbal-burn on burn's CPU backend with autodiff
/// (`Autodiff<NdArray<f32>>`): [`simbal_burn::MoeRouter::forward`] on tracked `X` and `R`, then
/// burn's `backward()` of `sum(gates * dW) + losses.total()`, whose gate gradient is `dW` and
/// whose loss gradients are 1: the work of [`run_step`] with [`step_losses`], on burn tensors.
pub struct BurnStep<B: BurnStepBackend = BurnCpu> {
    router: simbal_burn::MoeRouter<B>,
    x: burn::tensor::Tensor<B, 2>,
    r: burn::tensor::Tensor<B, 2>,
    dw: burn::tensor::Tensor<B, 2>,
}

/// A burn backend [`BurnStep`] runs on: simbal-burn's, with autodiff.
pub trait BurnStepBackend:
    simbal_burn::SimbalBackend + burn::tensor::backend::AutodiffBackend
{
}
impl<B: simbal_burn::SimbalBackend + burn::tensor::backend::AutodiffBackend> BurnStepBackend for B {}

/// burn's Flex CPU backend with autodiff (the other CPU backend simbal-burn runs on faer).
pub type BurnFlex = burn::backend::Autodiff<burn::backend::Flex>;

/// burn's CPU backend with autodiff, as [`BurnStep`] runs it.
pub type BurnCpu = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// The gradients one [`BurnStep`] returns: `dX` and `dR` as burn tensors (inner backend).
pub type BurnGrads<B = BurnCpu> = (
    burn::tensor::Tensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 2>,
    burn::tensor::Tensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 2>,
);

impl<B: BurnStepBackend> BurnStep<B> {
    /// The router of [`step_router`] and the inputs' values as burn tensors (`X`, `R` tracked).
    ///
    /// # Errors
    /// The router's errors.
    pub fn new(s: &StepShape, x: &[f32], r: &[f32], dw: &[f32]) -> Result<Self> {
        use burn::tensor::{Tensor, TensorData};
        let device = Default::default();
        let t = |v: &[f32], shape: [usize; 2]| {
            Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), shape), &device)
        };
        Ok(Self {
            router: simbal_burn::MoeRouter::new(RouterConfig::new(s.e, s.k), &device)?,
            x: t(x, [s.n, s.d]).require_grad(),
            r: t(r, [s.d, s.e]).require_grad(),
            dw: t(dw, [s.n, s.k]),
        })
    }

    /// One step: forward, backward, `dX` and `dR` read from burn's gradients.
    ///
    /// # Errors
    /// The forward's errors; the backward's (kept by the router, see
    /// [`simbal_burn::MoeRouter::take_error`]); a missing gradient.
    pub fn run(&self, losses: &LossConfig) -> Result<BurnGrads<B>> {
        let out = self
            .router
            .forward(self.x.clone(), self.r.clone(), losses)?;
        let objective = (out.gates * self.dw.clone()).sum() + out.losses.total();
        let grads = objective.backward();
        if let Some(e) = self.router.take_error()? {
            return Err(e);
        }
        let missing = || simbal_core::SimbalError::Backend {
            message: "simbal-burn step: no gradient for X or R".into(),
        };
        Ok((
            self.x.grad(&grads).ok_or_else(missing)?,
            self.r.grad(&grads).ok_or_else(missing)?,
        ))
    }
}

/// The largest `|a - b|` over two equally long slices (`inf` when their lengths differ).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
