#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use simbal_core::*;

/// The fast CPU backend (faer GEMMs, rayon): feature `faer`, on by default.
#[cfg(feature = "faer")]
pub use simbal_faer as faer;

/// The dfdx backend and interop: feature `dfdx`.
#[cfg(feature = "dfdx")]
pub use simbal_dfdx as dfdx;

/// The GPU backend through cubecl: features `wgpu` and `cuda`.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use simbal_cubecl as cubecl;

#[cfg(feature = "burn")]
pub use simbal_burn as burn;
