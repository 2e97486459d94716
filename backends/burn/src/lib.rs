//! # simbal-burn
//!
//! simbal's router and balancing losses as burn tensor ops. A [`MoeRouter`] takes burn tensors
//! (`X`, `R`, optional bias, token mask and sequence offsets) and returns the routing (indices,
//! gates, scores, counts, dropped flags, dispatch plan) and the auxiliary losses (SimBal, LBL at
//! every level, z-loss) as burn tensors; on `Autodiff<_>` the gates and the loss tensors are one
//! node of burn's graph whose backward is simbal's analytic gradient.
//!
//! Where the work runs is [`SimbalBackend`]'s choice per burn backend (see [`backend`]):
//! simbal-faer on `NdArray`'s memory, simbal-cubecl on the handles of burn's cubecl backends
//! (features `wgpu`, `cuda`), and the generic path ([`BurnTensors`]) for any other backend.
//!
//! Switching the balancing method is the [`simbal_core::LossConfig`] passed to the forward:
//! `LossConfig::simbal()`, `LossConfig::switch()`, `LossConfig::none().with_z_loss(..)`, ...
#![warn(missing_docs)]

mod autodiff;
pub mod backend;
mod convert;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
#[cfg(feature = "flex")]
mod flex;
pub mod generic;
pub mod moe;
pub mod ndarray;
pub mod route;
mod router;

pub use backend::SimbalBackend;
pub use generic::{BurnBuf, BurnTensors};
pub use moe::{MoeLayer, MoeLayerConfig, MoeOutput};
pub use router::{AuxLosses, DispatchPlan, MoeRouter, RouterOutput, TensorBatch};

/// Re-exported for [`generic_simbal_backend!`] and for users.
pub use burn;
/// Re-exported for [`generic_simbal_backend!`] and for users.
pub use simbal_core;
