//! The GEMM ([`simbal_core::gemm`], the one kernel every backend writes): against the
//! references for every transpose, `alpha` and `beta`, its precondition function, and arbitrary
//! input.

use crate::harness::errors::refused;
use crate::harness::fuzz::{dim, guard, mul, pool, Filler, CASES as FUZZ_CASES};
use crate::harness::gen;
use crate::harness::kernel::{three, CASES, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::{view, view_mut};
use simbal_core::{Backend, Gemm, GemmArgs, Rng, Scalar};

/// The GEMM's tests, as a module `gemm` of `#[test]`s on the backend `$make` builds (see
/// [`crate::conformance_suite!`]).
#[macro_export]
macro_rules! conformance_gemm {
    ($make:expr) => {
        $crate::__conformance_tests! { $make; gemm;
            kernel_gemm => kernel_gemm,
            error_length_mismatch => error_length_mismatch,
            fuzz_kernel => fuzz_kernel,
        }
    };
}

fn gemm_run<C: Backend>(c: &C, g: &Gemm, a: &[f64], b: &[f64], c0: &[f64]) -> R<Vec<f64>> {
    let (ab, bb) = (up(c, a)?, up(c, b)?);
    let mut cb = up(c, c0)?;
    c.gemm(
        GemmArgs {
            gemm: *g,
            a: view::<C>(&ab),
            b: view::<C>(&bb),
            c: view_mut::<C>(&mut cb),
        }
        .check(c)?,
    )?;
    down(c, &cb)
}

/// `gemm` with every transpose combination, `alpha`, `beta` (`beta = 0` must ignore a NaN-filled
/// `C`) and shapes from 1 to 7 (`k` from 0).
pub fn kernel_gemm<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "gemm::kernel_gemm";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        (1..=7usize, 1..=7usize, 0..=7usize),
        (any::<bool>(), any::<bool>()),
        select(vec![1.0, -0.5, 2.0]),
        select(vec![0.0, 1.0, 0.5]),
        any::<u64>(),
    );
    run_prop(
        NAME,
        CASES,
        strategy,
        |((m, n, k), (ta, tb), alpha, beta, seed)| {
            let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
            g.trans_a = ta;
            g.trans_b = tb;
            let mut rng = Rng::new(seed);
            let a = rounded::<B::Elem>(&gen::normal(&mut rng, m * k, 1.0));
            let bm = rounded::<B::Elem>(&gen::normal(&mut rng, k * n, 1.0));
            let mut c0 = rounded::<B::Elem>(&gen::normal(&mut rng, m * n, 1.0));
            if beta == 0.0 {
                c0.iter_mut().for_each(|v| *v = f64::NAN);
            }
            let (got, want, want64) = three!(&b, gemm_run(&g, &a, &bm, &c0));
            vs_refs(&want, &want64, |tag, w| {
                close(&format!("{g:?} vs {tag}"), &got, w, tol)
            })
        },
    );
}

/// `LengthMismatch` from the GEMM's precondition function, for each operand in turn.
pub fn error_length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "gemm::error_length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let g = Gemm::new(2, 3, 4);
    let (la, lb, lc) = g.lens();
    for bad in 0..3 {
        let len = |i: usize, l: usize| if i == bad { l + 1 } else { l };
        let (a, b) = (c.zeros(len(0, la)).unwrap(), c.zeros(len(1, lb)).unwrap());
        let mut cm = c.zeros(len(2, lc)).unwrap();
        let args = GemmArgs {
            gemm: g,
            a: view::<B>(&a),
            b: view::<B>(&b),
            c: view_mut::<B>(&mut cm),
        };
        refused(
            N,
            &format!("gemm with operand {bad} too long"),
            args.check(&c),
        );
    }
}

/// `gemm` on arbitrary shapes (products that overflow included), transposes, `beta` (NaN
/// included), lengths and values, through its precondition function.
pub fn fuzz_kernel<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "gemm::fuzz_kernel";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        (dim(), dim(), dim()),
        (any::<bool>(), any::<bool>()),
        select(vec![0.0, 1.0, 0.5, f64::NAN, 1e300]),
        pool(),
    );
    run_prop(NAME, FUZZ_CASES, strategy, |input| {
        let ((gm, gn, d), (ta, tb), beta, pool) = &input;
        let d = *d;
        let f = Filler::new(pool);
        let ub = |v: Vec<f64>| up(&b, &v).ctx("upload");
        let mut g = Gemm::new(*gm, *gn, d).alpha(1.5).beta(*beta);
        g.trans_a = *ta;
        g.trans_b = *tb;
        let a = ub(f.vals(mul(*gm, d)))?;
        let bm = ub(f.vals(mul(d, *gn)))?;
        let mut c = ub(f.vals(mul(*gm, *gn)))?;
        guard("gemm", &input, || {
            GemmArgs {
                gemm: g,
                a: view::<B>(&a),
                b: view::<B>(&bm),
                c: view_mut::<B>(&mut c),
            }
            .check(&b)
            .and_then(|a| b.gemm(a))
        })?
        .ok();
        Ok(())
    });
}
