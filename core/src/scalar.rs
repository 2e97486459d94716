//! The element types simbal computes in.

use core::fmt::{Debug, Display};
use num_traits::{Float, FromPrimitive, ToPrimitive};

/// A floating-point element type: `f32` or `f64`.
///
/// All arithmetic accumulates in the element type itself (SPEC: "accumulate in the input type").
pub trait Scalar:
    Float + FromPrimitive + ToPrimitive + Debug + Display + Default + Send + Sync + 'static
{
    /// Name of the type, for messages and test names.
    const NAME: &'static str;
    /// Relative tolerance of the conformance suite for this type (SPEC "Precision and tolerance").
    const CONFORMANCE_TOL: f64;

    /// Converts an `f64` constant (a configuration coefficient) to this type.
    fn of(x: f64) -> Self;
    /// Converts a count to this type.
    fn of_usize(x: usize) -> Self;
    /// Widens to `f64`.
    fn to_f64_lossy(self) -> f64;
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
    const CONFORMANCE_TOL: f64 = 1e-4;
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn of_usize(x: usize) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64_lossy(self) -> f64 {
        self as f64
    }
}

impl Scalar for f64 {
    const NAME: &'static str = "f64";
    const CONFORMANCE_TOL: f64 = 1e-10;
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn of_usize(x: usize) -> Self {
        x as f64
    }
    #[inline]
    fn to_f64_lossy(self) -> f64 {
        self
    }
}
