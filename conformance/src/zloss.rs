//! The router z-loss (its kernel in [`simbal_core::zloss`]): `lse_sq_sum` on its own (the
//! z-loss gradient is checked through the router's finite differences and agreement checks),
//! its errors and the kernel on arbitrary input.

use crate::harness::errors::{check, invalid, refused, setup, start};
use crate::harness::fuzz::{dims, fuzz_check, mul, pool};
use crate::harness::gen;
use crate::harness::kernel::{call, kernel_check, three, Fill, Zeros, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::view;
use simbal_core::router::score::score_row;
use simbal_core::zloss::LseSqSum;
use simbal_core::{
    Backend, LossConfig, Rng, Router, RouterConfig, Scalar, ScoreFn, SimbalError, ZLossConfig,
};

crate::__conformance_op! {
    /// The z-loss's tests, as a module `zloss` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_zloss, zloss {
        kernel_lse_sq_sum => kernel_lse_sq_sum,
        error_overflow => error_overflow,
        error_invalid_coefficient => error_invalid_coefficient,
        error_length_mismatch => error_length_mismatch,
        fuzz_kernels => fuzz_kernels,
    }
}

/// The buffers of one `lse_sq_sum` call, for its kernel, error and fuzz checks alike (see
/// [`crate::harness::kernel`]).
struct Lse<B: Backend> {
    n: usize,
    e: usize,
    /// Logits, `n x e`.
    z: B::Buf,
    /// Scores, `n x e`.
    p: B::Buf,
}

impl<B: Backend> Lse<B> {
    /// Logits and scores of `n x e` from `fill`.
    fn new(n: usize, e: usize, fill: &dyn Fill<B>) -> R<Self> {
        let (z, p) = (fill.vals(mul(n, e))?, fill.vals(mul(n, e))?);
        Ok(Self { n, e, z, p })
    }

    /// The call from the logits, with the scores of `score` when given.
    fn args(&self, score: Option<ScoreFn>) -> LseSqSum<'_, B> {
        LseSqSum {
            n: self.n,
            groups: simbal_core::tokens::Groups::whole(self.n),
            e: self.e,
            z: view::<B>(&self.z),
            scores: score.map(|f| (f, view::<B>(&self.p))),
        }
    }
}

/// `lse_sq_sum` of `n x e` logits `z`, with the scores when given.
fn lse_run<C: Backend>(
    c: &C,
    n: usize,
    e: usize,
    z: &[f64],
    scores: Option<(ScoreFn, &[f64])>,
) -> R<f64> {
    let mut b = Lse::new(n, e, &Zeros(c))?;
    b.z = up(c, z)?;
    if let Some((_, p)) = scores {
        b.p = up(c, p)?;
    }
    let sum = call!(c, lse_sq_sum(b.args(scores.map(|s| s.0))))?;
    Ok(c.read_value(&sum)?.to_f64_lossy())
}

/// `lse_sq_sum` from the logits alone (`scores: None`), logits of moderate and large
/// magnitude; and given the scores (`Some`) of either score function (as `route` writes them,
/// rounded to the element type), against the reference's sum from the logits.
pub fn kernel_lse_sq_sum<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "zloss::kernel_lse_sq_sum";
    let strategy = (
        1..=8usize,
        1..=8usize,
        select(vec![1.0, 10.0, 1e3]),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, (n, e, std, seed)| {
        let z = rounded::<B::Elem>(&gen::normal(&mut Rng::new(seed), n * e, std));
        let (got, want, want64) = three!(b, lse_run(n, e, &z, None));
        vs_refs(&want, &want64, |tag, w| {
            close1(&format!("lse_sq_sum vs {tag}"), got, *w, tol)
        })?;
        for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
            let mut p = vec![0.0; n * e];
            for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
                score_row(score, zr, pr);
            }
            let p = rounded::<B::Elem>(&p);
            let got = lse_run(b, n, e, &z, Some((score, &p))).ctx("lse_sq_sum scored (backend)")?;
            vs_refs(&want, &want64, |tag, w| {
                close1(
                    &format!("lse_sq_sum scored ({score:?}) vs {tag}"),
                    got,
                    *w,
                    tol,
                )
            })?;
        }
        Ok(())
    });
}

/// `Overflow`: z-loss of logits beyond `sqrt(max)` (1e30 in f32, 1e200 in f64) is refused,
/// never returned as inf/NaN.
pub fn error_overflow<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "zloss::error_overflow";
    start!(N, make);
    let big = if is_f64::<B::Elem>() { 1e200 } else { 1e30 };
    let b = fresh(make);
    let z = up(&b, &[big, 0.0, -big, 1.0, big, big]).unwrap();
    let dw = up(&b, &[0.0; 2]).unwrap();
    let mut router = Router::new(b, RouterConfig::new(3, 1)).unwrap();
    let mut pass = router.forward_logits(view::<B>(&z), None).unwrap();
    let l = LossConfig::none().with_z_loss(ZLossConfig::default());
    check(
        N,
        "z-loss",
        pass.backward(view::<B>(&dw), &l, None).map(|_| ()),
        |e| matches!(e, SimbalError::Overflow { .. }),
    );
}

/// `InvalidCoefficient`: a negative `beta`.
pub fn error_invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "zloss::error_invalid_coefficient";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 3, 2);
    let z = LossConfig::none().with_z_loss(ZLossConfig { beta: -1.0 });
    check(
        N,
        "beta < 0",
        s.backward(&z, None),
        invalid("z-loss beta", -1.0),
    );
    s.still_works(N);
}

/// `LengthMismatch` from `lse_sq_sum`'s precondition function: logits, or scores, of the wrong
/// length.
pub fn error_length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "zloss::error_length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let mut b = Lse::new(2, 3, &Zeros(&c)).unwrap();
    b.z = c.zeros(5).unwrap();
    refused(N, "lse_sq_sum", b.args(None).check(&c));
    let mut b = Lse::new(2, 3, &Zeros(&c)).unwrap();
    b.p = c.zeros(5).unwrap();
    refused(N, "lse_sq_sum", b.args(Some(ScoreFn::Softmax)).check(&c));
}

/// `lse_sq_sum` on arbitrary shapes, lengths and values, without and with either score
/// function's scores, through its precondition function.
pub fn fuzz_kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "zloss::fuzz_kernels";
    fuzz_check(make, NAME, (dims(), pool()), |cx, input| {
        let ((n, _, e), b) = (*input, cx.b);
        let lse = Lse::new(n, e, cx).ctx("upload")?;
        for score in [None, Some(ScoreFn::Softmax), Some(ScoreFn::Sigmoid)] {
            cx.guard("lse_sq_sum", || call!(b, lse_sq_sum(lse.args(score))))?
                .ok();
        }
        Ok(())
    });
}
