//! Validation reductions in lanes the compiler vectorises: `max |x|` and the first non-finite
//! value, the same results as core's `validate::max_abs` and `shape::check_finite` at memory
//! speed (no early exit or branch per element).

use simbal_core::Scalar;

/// Larger of two values, NaN if either is NaN.
pub(crate) fn max_nan<T: Scalar>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if b > a {
        b
    } else {
        a
    }
}

/// Position (plus `offset`) of the first non-finite value of `x`. Scans blocks without
/// branching on each element, so the common all-finite case runs at memory speed.
pub(crate) fn first_non_finite<T: Scalar>(x: &[T], offset: usize) -> Option<usize> {
    const BLOCK: usize = 1024;
    for (bi, block) in x.chunks(BLOCK).enumerate() {
        let finite = block.iter().fold(true, |ok, v| ok & v.is_finite());
        if !finite {
            let i = block.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Some(offset + bi * BLOCK + i);
        }
    }
    None
}

/// Largest `|x|`, NaN if any element is NaN, 0 when empty (core's `max_abs`), in lanes the
/// compiler vectorises: no early exit, NaN recorded in a flag per lane.
pub(crate) fn max_abs_lanes<T: Scalar>(x: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let mut nan = [false; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for ((m, f), &v) in acc.iter_mut().zip(nan.iter_mut()).zip(c) {
            let a = v.abs();
            *f |= v.is_nan();
            *m = if a > *m { a } else { *m };
        }
    }
    let mut m = T::zero();
    let mut any_nan = nan.iter().any(|&f| f);
    for &v in acc.iter().chain(chunks.remainder()) {
        any_nan |= v.is_nan();
        let a = v.abs();
        if a > m {
            m = a;
        }
    }
    if any_nan {
        T::nan()
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::{first_non_finite, max_abs_lanes};

    #[test]
    fn max_abs_matches_core_on_every_length_and_nan_position() {
        for len in 0..40 {
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 23) as f32 - 11.5).collect();
            assert_eq!(max_abs_lanes(&x), simbal_core::validate::max_abs(&x));
            for at in 0..len {
                let mut y = x.clone();
                y[at] = f32::NAN;
                assert!(max_abs_lanes(&y).is_nan(), "len {len}, NaN at {at}");
                y[at] = f32::NEG_INFINITY;
                assert_eq!(max_abs_lanes(&y), f32::INFINITY);
            }
        }
    }

    #[test]
    fn first_non_finite_finds_the_first_position() {
        let mut x = vec![1.0f64; 5000];
        assert_eq!(first_non_finite(&x, 0), None);
        x[4321] = f64::INFINITY;
        x[4999] = f64::NAN;
        assert_eq!(first_non_finite(&x, 7), Some(4328));
    }
}
