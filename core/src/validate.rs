//! Validation reductions: the reference of [`crate::Backend::max_abs`] (the router checks whole
//! buffers through one small reduction) and the scan that locates a non-finite value.

use crate::scalar::Scalar;

/// Largest `|x|`, NaN if any element is NaN, 0 for an empty slice.
pub fn max_abs<T: Scalar>(x: &[T]) -> T {
    let mut m = T::zero();
    for &v in x {
        if v.is_nan() {
            return v;
        }
        let a = v.abs();
        if a > m {
            m = a;
        }
    }
    m
}
