//! Validation (`max_abs`, `check_finite`, and the memory primitives under them): the kernels
//! against the reference, `NonFinite` with its position from every router entry point that
//! checks values, and arbitrary input.

use crate::harness::errors::{setup, start, Input};
use crate::harness::fuzz::{dims, fuzz_check, mul, pool};
use crate::harness::gen;
use crate::harness::kernel::{kernel_check, three, Fill, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::{Backend, Rng, RouterConfig, Scalar, SimbalError};

crate::__conformance_op! {
    /// The validation tests, as a module `validation` of `#[test]`s on the backend `$make` builds
    /// (see [`crate::conformance_suite!`]).
    conformance_validation, validation {
        kernel_check_finite => kernel_check_finite,
        error_non_finite => error_non_finite,
        fuzz_kernels => fuzz_kernels,
    }
}

fn finite_run<C: Backend>(c: &C, cols: usize, v: &[f64]) -> R<Result<(), SimbalError>> {
    Ok(c.check_finite("probe", cols, view::<C>(&up(c, v)?)))
}

fn max_abs_run<C: Backend>(c: &C, v: &[f64]) -> R<f64> {
    Ok(c.read_value(&c.max_abs(view::<C>(&up(c, v)?))?)?
        .to_f64_lossy())
}

/// `check_finite`: `Ok` on finite data, else `NonFinite` at the same first position; and
/// `max_abs` on the same data: exactly the reference's value, NaN when any element is NaN.
pub fn kernel_check_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "validation::kernel_check_finite";
    let strategy = (
        1..=6usize,
        1..=6usize,
        prop::option::of((
            any::<prop::sample::Index>(),
            select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
        )),
        any::<prop::sample::Index>(),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, _, case| {
        let (rows, cols, bad, bad2, seed) = case;
        let mut v = gen::normal(&mut Rng::new(seed), rows * cols, 1.0);
        let mut first = None;
        if let Some((at, val)) = bad {
            let (a, b2) = (at.index(v.len()), bad2.index(v.len()));
            v[a] = val;
            v[b2] = f64::NAN;
            first = Some(a.min(b2));
        }
        let (got_max, want_max, _) = three!(b, max_abs_run(&v));
        ensure(
            got_max == want_max || (got_max.is_nan() && want_max.is_nan()),
            || format!("max_abs: backend {got_max}, reference {want_max} on {v:?}"),
        )?;
        let (got, want, _) = three!(b, finite_run(cols, &v));
        ensure(got == want, || {
            format!("check_finite: backend {got:?}, reference {want:?}")
        })?;
        match (first, got) {
            (None, Ok(())) => Ok(()),
            (
                Some(at),
                Err(SimbalError::NonFinite {
                    what: "probe",
                    row,
                    col,
                }),
            ) => ensure((row, col) == (at / cols, at % cols), || {
                format!("check_finite reported ({row}, {col}), first non-finite at {at}")
            }),
            (first, got) => Err(fail(format!(
                "check_finite: first bad at {first:?}, got {got:?}"
            ))),
        }
    });
}

/// `NonFinite`: NaN/inf in tokens, weight, bias, logits and gate gradient, with the position;
/// nothing is reported with the check turned off.
pub fn error_non_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "validation::error_non_finite";
    start!(N, make);
    let (n, d, e) = (3, 4, 5);
    let mut s = setup(make, RouterConfig::new(e, 2), n, d);
    let mut xv = vec![0.5; n * d];
    xv[d + 2] = f64::NAN;
    xv[2 * d + 3] = f64::INFINITY;
    let x = s.up(&xv);
    let mut rv = vec![0.5; d * e];
    rv[2 * e + 4] = f64::NEG_INFINITY;
    let r = s.up(&rv);
    let bias = s.up(&[0.0, 0.0, f64::NAN, 0.0, 0.0]);
    let mut zv = vec![0.0; n * e];
    zv[2 * e + 1] = f64::NAN;
    let z = s.up(&zv);
    let dw = s.up(&[0.0, 0.0, 0.0, f64::INFINITY, 0.0, 0.0]);
    // The first non-finite value of each, as (row, column).
    let nf = |what, (row, col)| SimbalError::NonFinite { what, row, col };
    let cases = [
        (Input::X, &x, (1, 2)),
        (Input::R, &r, (2, 4)),
        (Input::Bias, &bias, (0, 2)),
        (Input::Logits, &z, (2, 1)),
        (Input::Dw, &dw, (1, 1)),
    ];
    s.refuses(N, nf, cases);
    s.still_works(N);
    // The check can be turned off: the call then succeeds.
    s.router
        .set_config(RouterConfig::new(e, 2).with_check_finite(false))
        .unwrap();
    s.forward(Some(&x), None, None)
        .unwrap_or_else(|err| panic!("{N}: with the check off, forward gave {err:?}"));
}

/// The memory primitives with mismatched lengths (`download`, `write`, their index versions,
/// `idx_all_below`), `max_abs` and `check_finite` on arbitrary values.
pub fn fuzz_kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "validation::fuzz_kernels";
    fuzz_check(make, NAME, (dims(), pool()), |cx, input| {
        let ((n, d, e), b, f) = (*input, cx.b, &cx.f);
        // Memory primitives with mismatched lengths.
        let mut host = vec![B::Elem::of(0.0); f.len(Some(2))];
        let mut buf = cx.up(Some(3))?;
        cx.guard("download", || b.download(view::<B>(&buf), &mut host))?
            .ok();
        cx.guard("write", || b.write(view_mut::<B>(&mut buf), &host))?
            .ok();
        let mut ihost = vec![0u32; f.len(Some(2))];
        let mut ibuf = cx.idx(Some(3), 3).ctx("idx_upload")?;
        cx.guard("idx_download", || {
            b.idx_download(idx_view::<B>(&ibuf), &mut ihost)
        })?
        .ok();
        cx.guard("idx_write", || {
            b.idx_write(idx_view_mut::<B>(&mut ibuf), &ihost)
        })?
        .ok();
        cx.guard("idx_all_below", || {
            b.idx_all_below(idx_view::<B>(&ibuf), e as u32)
        })?
        .ok();
        let z = cx.up(mul(n, e))?;
        cx.guard("max_abs", || b.max_abs(view::<B>(&z)))?.ok();
        cx.guard("check_finite", || b.check_finite("fuzz", d, view::<B>(&z)))?
            .ok();
        Ok(())
    });
}
