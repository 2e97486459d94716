//! Harness shared by every check: backend acquisition, the proptest runner, host/backend
//! transfers through `f64`, and the comparisons at the SPEC's tolerances.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use simbal_core::{Backend, Memory, Result as SResult, Scalar};
use std::borrow::Borrow;
use std::fmt::Debug;

/// What every check's proptest body returns.
pub type CaseResult = Result<(), TestCaseError>;

/// A failed case with `msg`.
pub fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

/// A rejected case (too close to a kink, a tie, ...): proptest draws another one.
pub fn reject(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::reject(msg.into())
}

/// Turns a core error into a case failure naming the call.
pub trait Ctx<T> {
    /// The value, or a failure "`what`: error".
    fn ctx(self, what: &str) -> Result<T, TestCaseError>;
}

impl<T> Ctx<T> for SResult<T> {
    fn ctx(self, what: &str) -> Result<T, TestCaseError> {
        self.map_err(|e| fail(format!("{what} returned Err({e:?})")))
    }
}

/// Whether failing loudly is required (the `CI` environment variable is set).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Builds the backend for `check`. `None` from `make` means "unavailable here" (a GPU backend
/// without an adapter): outside CI the check prints a note and is skipped, under `CI` it panics.
pub fn acquire<B: Backend>(make: &dyn Fn() -> Option<B>, check: &str) -> Option<B> {
    match make() {
        Some(b) => Some(b),
        None if in_ci() => {
            panic!("{check}: backend unavailable, and CI is set: a conformance run must not skip")
        }
        None => {
            eprintln!("{check}: backend unavailable on this machine; check skipped (set CI to fail instead)");
            None
        }
    }
}

/// Another instance of a backend that [`acquire`] already produced once.
pub fn fresh<B: Backend>(make: &dyn Fn() -> Option<B>) -> B {
    match make() {
        Some(b) => b,
        None => panic!("the backend constructor returned None after succeeding once"),
    }
}

/// Whether `T` is `f64` (by its precision, so it works for any `Scalar`).
pub fn is_f64<T: Scalar>() -> bool {
    T::of(1e300).to_f64_lossy().is_finite()
}

/// Converts `f64` data to the element type (rounding for `f32`).
pub fn to_elems<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::of(x)).collect()
}

/// Widens element data to `f64`.
pub fn to_f64<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64_lossy()).collect()
}

/// `v` rounded to `T` and widened back: exactly what a backend in `T` sees.
pub fn rounded<T: Scalar>(v: &[f64]) -> Vec<f64> {
    to_f64(&to_elems::<T>(v))
}

/// Uploads `f64` data as the backend's elements.
pub fn up<M: Memory>(b: &M, v: &[f64]) -> SResult<M::Buf> {
    b.upload(&to_elems::<M::Elem>(v))
}

/// Uploads optional `f64` data.
pub fn up_opt<M: Memory>(b: &M, v: Option<&[f64]>) -> SResult<Option<M::Buf>> {
    v.map(|v| up(b, v)).transpose()
}

/// Downloads a buffer (owned or a view) to `f64`.
pub fn down<M: Memory, V: Borrow<M::View> + ?Sized>(b: &M, buf: &V) -> SResult<Vec<f64>> {
    let buf = buf.borrow();
    let mut host = vec![M::Elem::of(0.0); b.len(buf)];
    b.download(buf, &mut host)?;
    Ok(to_f64(&host))
}

/// Downloads an index buffer (owned or a view).
pub fn down_idx<M: Memory, V: Borrow<M::IdxView> + ?Sized>(b: &M, buf: &V) -> SResult<Vec<u32>> {
    let buf = buf.borrow();
    let mut host = vec![0u32; b.idx_len(buf)];
    b.idx_download(buf, &mut host)?;
    Ok(host)
}

/// An optional owned buffer as an optional view.
pub fn opt_view<M: Memory>(b: &Option<M::Buf>) -> Option<&M::View> {
    b.as_ref().map(|b| b.borrow())
}

/// The scale a tolerance is relative to: `max(1, max |want|)` (SPEC: "relative to the output's
/// scale").
pub fn scale_of(want: &[f64]) -> f64 {
    want.iter().fold(1.0f64, |m, v| m.max(v.abs()))
}

/// `got` and `want` agree to `tol` relative to the scale of `want`; non-finite values fail.
pub fn close(what: &str, got: &[f64], want: &[f64], tol: f64) -> CaseResult {
    if got.len() != want.len() {
        return Err(fail(format!(
            "{what}: length {} but the reference has {}",
            got.len(),
            want.len()
        )));
    }
    let scale = scale_of(want);
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() || !w.is_finite() {
            return Err(fail(format!(
                "{what}[{i}]: non-finite value (got {g}, reference {w})"
            )));
        }
        let err = (g - w).abs();
        if err > worst.0 {
            worst = (err, i);
        }
    }
    if worst.0 > tol * scale {
        let i = worst.1;
        return Err(fail(format!(
            "{what}[{i}]: got {}, reference {}, error {:.3e} > tol {tol:.0e} x scale {scale:.3e}\n  got:       {got:?}\n  reference: {want:?}",
            got[i], want[i], worst.0
        )));
    }
    Ok(())
}

/// Scalar version of [`close`].
pub fn close1(what: &str, got: f64, want: f64, tol: f64) -> CaseResult {
    close(what, &[got], &[want], tol)
}

/// Exact equality (indices, flags, counts, plans).
pub fn same<T: PartialEq + Debug>(what: &str, got: &[T], want: &[T]) -> CaseResult {
    if got == want {
        Ok(())
    } else {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        Err(fail(format!(
            "{what} differ (first at {at:?}; lengths {} vs {}):\n  got:       {got:?}\n  reference: {want:?}",
            got.len(),
            want.len()
        )))
    }
}

/// Runs the comparison `f` against the reference in the backend's element type and against the
/// `f64` reference, each with its tag (`"reference"`, `"f64 reference"`).
pub fn vs_refs<T: ?Sized>(
    want: &T,
    want64: &T,
    mut f: impl FnMut(&str, &T) -> CaseResult,
) -> CaseResult {
    f("reference", want)?;
    f("f64 reference", want64)
}

/// A condition that must hold.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(fail(msg()))
    }
}

/// Seed of a check's random stream: `SIMBAL_CONFORMANCE_SEED` (a `u64`) if set, else a fixed
/// value derived from the check's name, so a CI run is reproducible and each check explores its
/// own cases.
pub fn seed_for(name: &str) -> u64 {
    if let Some(s) = std::env::var("SIMBAL_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        return s ^ fnv(name);
    }
    fnv(name)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Number of cases: `PROPTEST_CASES` overrides the check's default.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs a property over `cases` cases of `strategy`; panics with the minimal failing input.
pub fn run_prop<S>(name: &str, n_cases: u32, strategy: S, test: impl Fn(S::Value) -> CaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: cases(n_cases),
        failure_persistence: None,
        max_global_rejects: 20_000,
        max_local_rejects: 20_000,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let seed = seed_for(name);
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name} (seed {seed}; rerun with SIMBAL_CONFORMANCE_SEED to vary): {e}");
    }
}
