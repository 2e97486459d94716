//! # simbal-core
//!
//! The `no_std` heart of simbal: router math and Mixture-of-Experts load-balancing losses with
//! analytic gradients, the backend traits every compute backend implements, and the scalar
//! [`Reference`] backend every other backend is checked against.
//!
//! The math contract is SPEC.md: SimBal (`lambda ||R^T R - I||_1`, arXiv 2506.14038) and its
//! variants, Switch/GShard LBL at micro-batch, sequence and global-batch level, z-loss,
//! aux-loss-free bias balancing, mergeable statistics, the metrics MoE training logs, and
//! orthogonal initialisation.
//!
//! Where to find things. Each op has one module holding its reference math, its kernels'
//! arguments (with their precondition functions) and their defaults, and its user-facing entry
//! point: [`router`] (routing and its backward: [`Router`]), [`simbal`] ([`simbal_loss`]),
//! [`lbl`], [`zloss`], [`bias`] ([`update_bias`]), [`stats`], [`metrics`], [`gemm`],
//! [`tokens`] (token masks and sequence layouts) and [`validate`]. The backend layers: [`memory`] ([`Memory`]: buffers and transfers) under
//! [`backend`] ([`Backend`]: the kernels, every one with a default but the GEMM). Configuration
//! in [`config`], errors in [`error`], initialisation in [`init`].
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backend;
pub mod bias;
pub mod checked;
pub mod config;
pub mod error;
pub mod gemm;
pub mod host;
pub mod init;
pub mod lbl;
pub mod memory;
pub mod metrics;
pub mod reference;
pub mod router;
pub mod scalar;
pub mod shape;
pub mod simbal;
mod stage;
pub mod stats;
pub mod tokens;
pub mod validate;
pub mod zloss;

pub use backend::Backend;
pub use bias::update_bias;
pub use checked::Checked;
pub use config::{
    BiasUpdateConfig, Capacity, DropPolicy, GroupLimit, LblConfig, LblCounts, LblLevel,
    LblNormalization, LblScores, LossConfig, RouterConfig, ScoreFn, Selection, SeqLayout,
    SimBalConfig, SimBalNorm, WeightLayout, ZLossConfig,
};
pub use error::{Result, SimbalError};
pub use gemm::{Gemm, GemmArgs};
pub use init::{orthogonal_init, orthogonalize, Rng};
pub use memory::Memory;
pub use metrics::{orthogonality_error, pes, routing_entropy, seu, LoadMetrics};
pub use reference::Reference;
pub use router::{
    Batch, Gradients, LogitGradients, LogitsPass, LossValues, Pass, QueuedBackward, Router,
    Routing, Shape,
};
pub use scalar::Scalar;
pub use simbal::{simbal_loss, SimbalWorkspace};
pub use stats::RoutingStats;
