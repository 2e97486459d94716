//! # simbal-repro
//!
//! Trains Mixture-of-Experts models under each load-balancing method and reports whether
//! SimBal's claims (arXiv 2506.14038) hold: faster convergence than the Switch loss, balanced
//! load, less redundant experts, consistent routing.
//!
//! The main experiment ([`lm`]) is a multi-layer MoE transformer language model on real text,
//! written with burn modules and trained with burn's autodiff and Adam, its routers through
//! simbal-burn. The first edition's tasks ([`task`]) train one MoE layer with everything written
//! out by hand: the experts' forward and backward ([`mlp`]), the heads ([`model`]), Adam
//! ([`adam`]); the router, its losses and their analytic gradients come from `simbal-core` on any
//! [`simbal_core::Backend`].
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod adam;
mod describe;
pub mod error;
pub mod experiment;
pub mod layers;
mod linalg;
pub mod lm;
pub mod methods;
pub mod metrics;
pub mod mlp;
pub mod model;
pub mod plot;
pub mod report;
pub mod task;
pub mod train;

pub use error::{ReproError, Result};
