//! Helpers shared by the faer backend's tests.
#![allow(dead_code)]

use simbal_core::{Rng, Scalar};

/// `n` normal samples of standard deviation `std` from `seed`.
pub fn normal<T: Scalar>(seed: u64, n: usize, std: f64) -> Vec<T> {
    let mut v = vec![T::zero(); n];
    Rng::new(seed).fill_normal(std, &mut v);
    v
}

/// Largest absolute value (the output's scale), at least `floor`.
pub fn scale<T: Scalar>(x: &[T], floor: f64) -> f64 {
    x.iter()
        .map(|v| v.to_f64_lossy().abs())
        .fold(floor, f64::max)
}

/// Asserts `got` matches `want` elementwise to `T::CONFORMANCE_TOL` relative to `want`'s scale.
#[track_caller]
pub fn assert_close<T: Scalar>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let s = scale(want, f64::MIN_POSITIVE);
    let tol = T::CONFORMANCE_TOL * s;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64_lossy(), w.to_f64_lossy());
        assert!(
            (g - w).abs() <= tol,
            "{what} [{}]: element {i}: got {g}, want {w} (scale {s}, tol {tol})",
            T::NAME
        );
    }
}

/// Asserts two scalars agree to `T::CONFORMANCE_TOL` relative to `max(|want|, floor)`.
#[track_caller]
pub fn assert_close_scalar<T: Scalar>(what: &str, got: T, want: T, floor: f64) {
    let (g, w) = (got.to_f64_lossy(), want.to_f64_lossy());
    let tol = T::CONFORMANCE_TOL * w.abs().max(floor);
    assert!(
        (g - w).abs() <= tol,
        "{what} [{}]: got {g}, want {w} (tol {tol})",
        T::NAME
    );
}

/// Asserts `f64` statistics of a `T` computation match to `T::CONFORMANCE_TOL` relative to
/// `want`'s scale (the statistics are exact sums of `T` values, so `T`'s tolerance applies).
#[track_caller]
pub fn assert_close_as<T: Scalar>(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let s = scale(want, f64::MIN_POSITIVE);
    let tol = T::CONFORMANCE_TOL * s;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what} [{}]: element {i}: got {g}, want {w} (scale {s}, tol {tol})",
            T::NAME
        );
    }
}
