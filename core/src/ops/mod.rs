//! The reference kernels on host slices, one module per op with its forward and backward side by
//! side. Backends call these on blocks of rows; the [`crate::backend::Backend`] defaults run them
//! after checking every length, which the kernels take as a precondition.

pub mod bias;
pub mod gemm;
pub mod lbl;
pub mod reduce;
pub mod router;
pub mod score;
pub mod select;
pub mod simbal;
pub mod zloss;
