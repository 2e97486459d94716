//! The main experiment's task: a multi-layer MoE transformer language model on real text,
//! written with burn, its routers through simbal-burn.

pub mod corpus;
pub mod eval;
pub mod model;
pub mod run;
pub mod train;
