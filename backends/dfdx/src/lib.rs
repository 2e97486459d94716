//! # simbal-dfdx
//!
//! A [`simbal_core::Backend`] over [dfdx](https://docs.rs/dfdx/0.13) 0.13 tensors, and the glue to
//! train a dfdx model with simbal's router losses.
//!
//! - [`Dfdx`] is the backend: element buffers are 1-D dfdx tensors ([`Vector`]; the owned buffer
//!   is also the view kernels take), reshaped as each kernel needs; GEMM is dfdx's `matmul` on
//!   reshaped tensors with permuted views for the transposes; scores, the dense part of the
//!   router backward, the reductions, SimBal's element-wise pass, the column normalisation of
//!   ScaleFree SimBal, the routing entropy and `max_abs` are dfdx ops. Index work stays on the
//!   host (index buffers are host `Vec<u32>`, lent as `[u32]`): top-k selection and gates on the
//!   downloaded scores, capacity dropping and the dispatch plan, per-group counts, the scatter of
//!   the gate gradient (with the renormalised gate term's per-row coefficients); so does
//!   `check_finite`'s search for the position of a non-finite value (the core defaults, staged).
//!   It is generic over the dfdx device (`D: Device<E>`), `f32` and `f64`; only
//!   [`add_to_gradients_cpu`] and [`demo`] are tied to dfdx's `Cpu`.
//! - [`interop`] takes and returns dfdx tensors directly: the router weight as a dfdx tensor in
//!   either [`simbal_core::WeightLayout`], the routing as tensors for the expert combine, and
//!   gradients added into a dfdx [`dfdx::tensor::Gradients`] so a dfdx optimiser applies them.
//! - [`demo`] is a small MoE layer trained with dfdx's Adam, the router's gradient coming from
//!   simbal (SimBal plus the task loss's gate gradient).
//!
//! ```
//! use simbal_core::{LossConfig, Memory, Router, RouterConfig};
//! use simbal_dfdx::Dfdx;
//! let be = Dfdx::<f64>::cpu();
//! let (n, e, k) = (4, 3, 2);
//! let x = be.upload(&[0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, -1.0, 1.1, 1.2])?;
//! let r = be.upload(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])?; // D x E, D = 3
//! let mut router = Router::new(be.clone(), RouterConfig::new(e, k))?;
//! let mut pass = router.forward(&x, &r, None)?;
//! assert_eq!(pass.indices().len(), n * k); // index buffers are host slices
//! let dw = be.upload(&[1.0; 8])?;
//! let g = pass.backward(&dw, &LossConfig::simbal(), None)?;
//! assert!(g.losses.simbal.abs() < 1e-12); // the identity is orthogonal
//! assert_eq!(be.len(g.dx), 12); // gradients are dfdx tensors
//! # Ok::<(), simbal_core::SimbalError>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
pub mod demo;
mod groups;
pub mod interop;
mod memory;
mod reduce;
mod router;
mod simbal;

pub use backend::{Dfdx, Matrix, Vector};
pub use demo::{train_demo, train_demo_with, DemoConfig, DemoStep, Summary};
pub use interop::{
    add_to_gradients, add_to_gradients_cpu, simbal_loss_tensor, weight_shape, GradientTensors,
    PassTensors, RouterInputs, RouterTensors, RoutingTensors,
};

/// A dfdx error as a simbal error.
pub(crate) fn dev_err<Er: core::fmt::Display>(e: Er) -> simbal_core::SimbalError {
    simbal_core::SimbalError::Backend {
        message: format!("dfdx: {e}"),
    }
}
