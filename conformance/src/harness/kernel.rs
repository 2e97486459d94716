//! Kernel checks: every [`simbal_core::Backend`] kernel on its own, against
//! `Reference<B::Elem>` and `Reference<f64>` at `B::Elem::CONFORMANCE_TOL` (discrete outputs
//! exactly). Each kernel has one generic runner (uploads, `Args { .. }.check(..)`, the kernel,
//! downloads) used for the backend and both references, so all three see the same inputs.

/// Number of cases of each kernel property.
pub const CASES: u32 = 48;

/// What a kernel runner returns.
pub type R<T> = simbal_core::Result<T>;

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
