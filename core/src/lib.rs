//! # simbal-core
//!
//! The `no_std` heart of simbal: router math and Mixture-of-Experts load-balancing losses with
//! analytic gradients, a [`Backend`] trait every compute backend implements, and the scalar
//! [`Reference`] backend every other backend is checked against.
//!
//! The math contract is SPEC.md: SimBal (`lambda ||R^T R - I||_1`, arXiv 2506.14038) and its
//! variants, Switch/GShard LBL at micro-batch, sequence and global-batch level, z-loss,
//! aux-loss-free bias balancing, mergeable statistics, the metrics MoE training logs, and
//! orthogonal initialisation.
//!
//! Where to find things: configuration in [`config`]; each op's reference kernels (forward and
//! backward side by side) in [`ops`]; the backend layers in [`backend`]; the per-step ops in
//! [`router`]; statistics in [`stats`]; metrics in [`metrics`]; initialisation in [`init`].
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backend;
pub mod checks;
pub mod config;
pub mod error;
pub mod host;
pub mod init;
pub mod metrics;
pub mod ops;
pub mod reference;
pub mod router;
pub mod scalar;
pub mod shape;
mod stage;
pub mod stats;
pub mod workspace;

pub use backend::{check_gemm, Backend, BackwardSums, LblCoef};
pub use config::{
    BiasUpdateConfig, Capacity, DropPolicy, GroupLimit, LblConfig, LblLevel, LblNormalization,
    LossConfig, RouterConfig, ScoreFn, SimBalConfig, SimBalNorm, WeightLayout, ZLossConfig,
};
pub use error::{Result, SimbalError};
pub use init::{orthogonal_init, orthogonalize, Rng};
pub use metrics::{orthogonality_error, pes, routing_entropy, seu, LoadMetrics};
pub use ops::gemm::Gemm;
pub use reference::Reference;
pub use router::{simbal_loss, update_bias, LossValues, Router};
pub use scalar::Scalar;
pub use stats::RoutingStats;
pub use workspace::{Shape, SimbalWorkspace, Workspace};
