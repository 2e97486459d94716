//! # simbal-faer
//!
//! The fast CPU backend of simbal: GEMMs on [faer](https://docs.rs/faer), row kernels split
//! across [rayon](https://docs.rs/rayon) in blocks of tokens, buffers in plain `Vec`s.
//!
//! [`Faer<T>`] (`T` = `f32` or `f64`) implements [`simbal_core::Memory`] on host vectors
//! (`Buf = Vec<T>`, `View = [T]`, so users pass and receive slices) and [`simbal_core::Backend`].
//! Every kernel gives the results of the scalar [`simbal_core::Reference`] backend to the SPEC's
//! tolerances (indices exactly), and a training step of a shape seen before allocates nothing.
//!
//! Parallelism is the caller's choice, as a faer [`Par`]: [`Faer::new`] uses every thread of the
//! current rayon pool, [`Faer::with_par`]`(Par::Seq)` runs on the calling thread only. Work runs
//! on the rayon pool the call is made from (run it inside `ThreadPool::install` to pick a pool).
//!
//! Where things are: the [`Backend`](simbal_core::Backend) impl in `backend`, its forward
//! (`forward`: the logits GEMM fused with the routing rows) and backward (`backward`) block
//! drivers, the block scheduling in `blocks`, the lane reductions in `reduce`, the element-type
//! specialisations in `elem` ([`FaerElem`]) with the `f32` kernels they pick (`exp_f32`,
//! `route_f32`, `backward_f32`) and the generic forward rows (`route_generic`); the GEMM in
//! `gemm` and its skinny-output kernel in `skinny`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod backward;
mod backward_f32;
mod blocks;
mod elem;
mod exp_f32;
mod forward;
mod gemm;
mod reduce;
mod route_f32;
mod route_generic;
mod skinny;

use core::marker::PhantomData;
use simbal_core::Memory;

pub use elem::FaerElem;
pub use faer::Par;

/// The faer + rayon CPU backend in `T` (`f32` or `f64`).
///
/// Route a small batch, then take the backward pass with SimBal on the router weight:
///
/// ```
/// use simbal_core::{orthogonal_init, LossConfig, Router, RouterConfig, WeightLayout};
/// use simbal_faer::Faer;
///
/// let (n, d, e, k) = (64, 32, 8, 2);
/// let x: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 23) as f32 - 11.0) / 11.0).collect();
/// let r: Vec<f32> = orthogonal_init(WeightLayout::DxE, d, e, 7)?;
/// let mut router = Router::new(Faer::<f32>::new(), RouterConfig::new(e, k))?;
///
/// let mut pass = router.forward(&x, &r, None)?;
/// let idx = pass.indices();
/// assert_eq!(idx.len(), n * k);
/// assert!(idx.iter().all(|&i| (i as usize) < e));
/// // Gates are renormalised over the chosen experts: each token's gates sum to 1.
/// assert!(pass.gates().chunks(k).all(|w| (w.iter().sum::<f32>() - 1.0).abs() < 1e-5));
///
/// let dw = vec![1.0f32; n * k];
/// let grads = pass.backward(&dw, &LossConfig::simbal(), None)?;
/// // Orthogonal init: SimBal = 0.1 * ||R^T R - I||_1 starts at (almost) 0.
/// assert!(grads.losses.simbal < 1e-4);
/// assert_eq!(grads.dr.len(), d * e);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faer<T> {
    par: Par,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Faer<T> {
    /// The backend on every thread of the current rayon pool (`Par::rayon(0)`).
    pub fn new() -> Self {
        Self::with_par(Par::rayon(0))
    }

    /// The backend with the given parallelism: `Par::Seq` stays on the calling thread,
    /// `Par::rayon(n)` splits work into at most `n` concurrent blocks (0: all rayon threads).
    pub fn with_par(par: Par) -> Self {
        Self {
            par,
            _elem: PhantomData,
        }
    }

    /// The parallelism this backend uses.
    pub fn par(&self) -> Par {
        self.par
    }
}

impl<T> Default for Faer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FaerElem> Memory for Faer<T> {
    simbal_core::host_vec_memory!(T);

    fn name(&self) -> String {
        format!("faer-{}", T::NAME)
    }
}
