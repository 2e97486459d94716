//! The GEMM ([`simbal_core::gemm`], the one kernel every backend writes): against the
//! references for every transpose, `alpha` and `beta`, its precondition function, and arbitrary
//! input.

use crate::harness::errors::refused;
use crate::harness::fuzz::{dim, fuzz_check, mul, pool};
use crate::harness::gen;
use crate::harness::kernel::{call, kernel_check, three, Fill, Zeros, R};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::{view, view_mut};
use simbal_core::{Backend, Gemm, GemmArgs, Rng};

crate::__conformance_op! {
    /// The GEMM's tests, as a module `gemm` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_gemm, gemm {
        kernel_gemm => kernel_gemm,
        error_length_mismatch => error_length_mismatch,
        fuzz_kernel => fuzz_kernel,
    }
}

/// The operands of one GEMM call, for its kernel, error and fuzz checks alike (see
/// [`crate::harness::kernel`]).
struct Operands<B: Backend> {
    gemm: Gemm,
    /// `op(A)` is `m x k`.
    a: B::Buf,
    /// `op(B)` is `k x n`.
    b: B::Buf,
    /// `C`, `m x n`.
    c: B::Buf,
}

impl<B: Backend> Operands<B> {
    /// The operands of `gemm` from `fill`: `A`, `B`, `C`.
    fn new(gemm: Gemm, fill: &dyn Fill<B>) -> R<Self> {
        let Gemm { m, n, k, .. } = gemm;
        Ok(Self {
            gemm,
            a: fill.vals(mul(m, k))?,
            b: fill.vals(mul(k, n))?,
            c: fill.vals(mul(m, n))?,
        })
    }

    fn args(&mut self) -> GemmArgs<'_, B> {
        GemmArgs {
            gemm: self.gemm,
            a: view::<B>(&self.a),
            b: view::<B>(&self.b),
            c: view_mut::<B>(&mut self.c),
        }
    }
}

/// `gemm` with the transposes `(ta, tb)`, `alpha` and `beta`.
fn gemm_of(m: usize, n: usize, k: usize, (ta, tb): (bool, bool), alpha: f64, beta: f64) -> Gemm {
    let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
    (g.trans_a, g.trans_b) = (ta, tb);
    g
}

fn gemm_run<C: Backend>(c: &C, g: &Gemm, a: &[f64], b: &[f64], c0: &[f64]) -> R<Vec<f64>> {
    let mut o = Operands::new(*g, &Zeros(c))?;
    (o.a, o.b, o.c) = (up(c, a)?, up(c, b)?, up(c, c0)?);
    call!(c, gemm(o.args()))?;
    down(c, &o.c)
}

/// `gemm` with every transpose combination, `alpha`, `beta` (`beta = 0` must ignore a NaN-filled
/// `C`) and shapes from 1 to 7 (`k` from 0).
pub fn kernel_gemm<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "gemm::kernel_gemm";
    let strategy = (
        (1..=7usize, 1..=7usize, 0..=7usize),
        (any::<bool>(), any::<bool>()),
        select(vec![1.0, -0.5, 2.0]),
        select(vec![0.0, 1.0, 0.5]),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((m, n, k), (ta, tb), alpha, beta, seed) = case;
        let g = gemm_of(m, n, k, (ta, tb), alpha, beta);
        let mut rng = Rng::new(seed);
        let a = rounded::<B::Elem>(&gen::normal(&mut rng, m * k, 1.0));
        let bm = rounded::<B::Elem>(&gen::normal(&mut rng, k * n, 1.0));
        let mut c0 = rounded::<B::Elem>(&gen::normal(&mut rng, m * n, 1.0));
        if beta == 0.0 {
            c0.iter_mut().for_each(|v| *v = f64::NAN);
        }
        let (got, want, want64) = three!(b, gemm_run(&g, &a, &bm, &c0));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("{g:?} vs {tag}"), &got, w, tol)
        })
    });
}

/// `LengthMismatch` from the GEMM's precondition function, for each operand in turn.
pub fn error_length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "gemm::error_length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let g = Gemm::new(2, 3, 4);
    let lens = g.lens();
    for bad in 0..3 {
        let mut o = Operands::new(g, &Zeros(&c)).unwrap();
        let long = c.zeros([lens.0, lens.1, lens.2][bad] + 1).unwrap();
        *[&mut o.a, &mut o.b, &mut o.c][bad] = long;
        let what = format!("gemm with operand {bad} too long");
        refused(N, &what, o.args().check(&c));
    }
}

/// `gemm` on arbitrary shapes (products that overflow included), transposes, `beta` (NaN
/// included), lengths and values, through its precondition function.
pub fn fuzz_kernel<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "gemm::fuzz_kernel";
    let strategy = (
        (
            (dim(), dim(), dim()),
            (any::<bool>(), any::<bool>()),
            select(vec![0.0, 1.0, 0.5, f64::NAN, 1e300]),
        ),
        pool(),
    );
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((m, n, k), trans, beta) = *input;
        let mut o = Operands::new(gemm_of(m, n, k, trans, 1.5, beta), cx).ctx("upload")?;
        let b = cx.b;
        cx.guard("gemm", || call!(b, gemm(o.args())))?.ok();
        Ok(())
    });
}
