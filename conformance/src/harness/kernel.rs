//! Kernel checks: every [`simbal_core::Backend`] kernel on its own, against
//! `Reference<B::Elem>` and `Reference<f64>` at `B::Elem::CONFORMANCE_TOL` (discrete outputs
//! exactly). Each kernel has one generic runner (uploads, `Args { .. }.check(..)`, the kernel,
//! downloads) used for the backend and both references, so all three see the same inputs.
//!
//! The buffers a kernel's arguments borrow are owned by one buffer set per op (the ops' `bufs`
//! modules, the GEMM's and z-loss's own), built from a [`Fill`]: [`Zeros`] for the kernel
//! checks (which then upload their inputs) and the error checks (which then swap in a buffer
//! of the wrong length), a fuzz case's pool ([`crate::harness::fuzz::Fuzz`]) for the fuzz
//! checks. So each kernel's arguments are written once, for all three kinds of check.

use crate::harness::util::{acquire, run_prop, CaseResult};
use proptest::strategy::Strategy;
use simbal_core::{Backend, Scalar};
use std::fmt::Debug;

/// Number of cases of each kernel property.
pub const CASES: u32 = 48;

/// What a kernel runner returns.
pub type R<T> = simbal_core::Result<T>;

/// Runs the kernel property `name` on the backend `make` builds: [`CASES`] cases of `strategy`,
/// `test` on each with the backend and its tolerance `B::Elem::CONFORMANCE_TOL`. Skipped when
/// the backend is unavailable (see [`acquire`]).
pub fn kernel_check<B: Backend, S: Strategy>(
    make: &dyn Fn() -> Option<B>,
    name: &str,
    strategy: S,
    test: impl Fn(&B, f64, S::Value) -> CaseResult,
) where
    S::Value: Debug,
{
    let Some(b) = acquire(make, name) else {
        return;
    };
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(name, CASES, strategy, |v| test(&b, tol, v));
}

/// Where a buffer set's buffers come from: each is asked for with the length its shape implies,
/// `None` when that overflows `usize` (a fuzz case's shape).
pub trait Fill<B: Backend> {
    /// An element buffer.
    fn vals(&self, len: Option<usize>) -> R<B::Buf>;
    /// An index buffer; a source that draws entries keeps them below about `bound`.
    fn idx(&self, len: Option<usize>, bound: usize) -> R<B::IdxBuf>;
}

/// Zero buffers on a backend (shapes that do not overflow).
pub struct Zeros<'a, B>(pub &'a B);

impl<B: Backend> Fill<B> for Zeros<'_, B> {
    fn vals(&self, len: Option<usize>) -> R<B::Buf> {
        self.0.zeros(len.expect("a zero buffer's length overflows"))
    }
    fn idx(&self, len: Option<usize>, _bound: usize) -> R<B::IdxBuf> {
        self.0
            .idx_zeros(len.expect("a zero buffer's length overflows"))
    }
}

/// `$args.check($b)` (the kernel's precondition function), then, when it passes, the kernel
/// `$b.$kernel` on the checked arguments.
macro_rules! call {
    ($b:expr, $kernel:ident($args:expr)) => {{
        let b = $b;
        $args.check(b).and_then(|a| b.$kernel(a))
    }};
}
pub(crate) use call;

/// Runs `$body` (a generic runner call) on the backend, `Reference<B::Elem>` and `Reference<f64>`.
macro_rules! three {
    ($b:expr, $f:ident ( $($arg:expr),* )) => {{
        let got = $f($b, $($arg),*).ctx(concat!(stringify!($f), " (backend)"))?;
        let want = $f(&simbal_core::Reference::<B::Elem>::new(), $($arg),*).ctx(concat!(stringify!($f), " (reference)"))?;
        let want64 = $f(&simbal_core::Reference::<f64>::new(), $($arg),*).ctx(concat!(stringify!($f), " (f64 reference)"))?;
        (got, want, want64)
    }};
}
pub(crate) use three;
