//! Helpers shared by the faer backend's tests.
#![allow(dead_code)]

use simbal_core::config::RouterConfig;
use simbal_core::router::kernels::{Logits, Route, RouteRequest};
use simbal_core::{Backend, Gemm, GemmArgs, LossValues, Result, Rng, Scalar, ScoreFn};
use simbal_faer::{Faer, FaerElem, Par};

/// `per_elem_test!(check: test_f32 = f32, test_f64 = f64)`: the generic `check::<T>()` as one
/// test per element type, so each precision fails on its own.
// Not every test file of the crate uses it.
#[allow(unused_macros)]
macro_rules! per_elem_test {
    ($check:ident: $($test:ident = $elem:ty),+ $(,)?) => {
        $(#[test] fn $test() { $check::<$elem>(); })+
    };
}
#[allow(unused_imports)]
pub(crate) use per_elem_test;

/// `elems_test!(test: check(f32, f64))`: one test running the generic `check::<T>()` for each
/// element type in turn.
#[allow(unused_macros)]
macro_rules! elems_test {
    ($test:ident: $check:ident($($elem:ty),+ $(,)?)) => {
        #[test]
        fn $test() {
            $($check::<$elem>();)+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use elems_test;

/// The parallel settings every router comparison runs under (4 blocks even on a 2-core
/// machine).
pub fn backends<T: FaerElem>() -> Vec<Faer<T>> {
    vec![
        Faer::with_par(Par::Seq),
        Faer::with_par(Par::rayon(4)),
        Faer::new(),
    ]
}

/// The router configurations every comparison of the router's rows starts with, over `e`
/// experts: softmax renormalised, softmax plain and scaled, sigmoid.
pub fn base_configs(e: usize) -> Vec<RouterConfig> {
    vec![
        RouterConfig::new(e, 4),
        RouterConfig::new(e, 2)
            .with_renormalize(false)
            .with_scale(2.5),
        RouterConfig::new(e, 4).with_score(ScoreFn::Sigmoid),
    ]
}

/// `n` normal samples of standard deviation `std` from `seed`.
pub fn normal<T: Scalar>(seed: u64, n: usize, std: f64) -> Vec<T> {
    let mut v = vec![T::zero(); n];
    Rng::new(seed).fill_normal(std, &mut v);
    v
}

/// Largest absolute value (the output's scale), at least `floor`.
pub fn scale(x: &[f64], floor: f64) -> f64 {
    x.iter().map(|v| v.abs()).fold(floor, f64::max)
}

/// Asserts `got` matches `want` elementwise to `T::CONFORMANCE_TOL` relative to `want`'s scale.
#[track_caller]
pub fn assert_close<T: Scalar>(what: &str, got: &[T], want: &[T]) {
    let f64s = |v: &[T]| v.iter().map(|x| x.to_f64_lossy()).collect::<Vec<f64>>();
    assert_close_as::<T>(what, &f64s(got), &f64s(want));
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

/// Asserts `f64` values of a `T` computation match to `T::CONFORMANCE_TOL` relative to `want`'s
/// scale (statistics are exact sums of `T` values, so `T`'s tolerance applies).
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

/// `c = gemm(a, b)` on a host backend, through core's argument check.
pub fn gemm<T, B: Backend<Elem = T, View = [T]>>(
    be: &B,
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
) -> Result<()> {
    be.gemm(GemmArgs { gemm: *g, a, b, c }.check(be)?)
}

/// Scores, indices and gates of `n` tokens' logits `z` from a host backend's `route` kernel, the
/// arguments checked by core (`z` may have a wrong length); the plain top-k into `plain` when
/// given.
pub fn route_given<T: Scalar, B: Backend<Elem = T, View = [T], IdxView = [u32]>>(
    be: &B,
    cfg: &RouterConfig,
    n: usize,
    z: &[T],
    bias: Option<&[T]>,
    plain: Option<&mut [u32]>,
) -> Result<(Vec<T>, Vec<u32>, Vec<T>)> {
    let (ne, nk) = (n * cfg.experts, n * cfg.k);
    let mut z = z.to_vec();
    let (mut p, mut idx, mut gates) = (vec![T::zero(); ne], vec![0u32; nk], vec![T::zero(); nk]);
    be.route(
        Route {
            cfg,
            n,
            logits: Logits::Given,
            bias,
            z: &mut z[..],
            p: &mut p[..],
            idx: &mut idx[..],
            gates: &mut gates[..],
            plain,
            request: RouteRequest::default(),
        }
        .check(be)?,
    )?;
    Ok((p, idx, gates))
}

/// Asserts every loss value agrees (see [`assert_close_scalar`]).
#[track_caller]
pub fn assert_losses<T: Scalar>(what: &str, got: &LossValues<T>, want: &LossValues<T>) {
    assert_close_scalar(&format!("{what}: simbal"), got.simbal, want.simbal, 1e-30);
    assert_close_scalar(&format!("{what}: lbl"), got.lbl, want.lbl, 1e-30);
    assert_close_scalar(&format!("{what}: z-loss"), got.z_loss, want.z_loss, 1e-30);
    assert_close_scalar(&format!("{what}: total"), got.total, want.total, 1e-30);
}
