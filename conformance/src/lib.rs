//! # simbal-conformance
//!
//! The conformance suite every simbal backend instantiates: one generic check per property of
//! SPEC.md, expanded into `#[test]`s per backend and element type by [`conformance_suite!`]
//! (cubecl's `testgen_all!` pattern).
//!
//! ```ignore
//! // backends/faer/tests/conformance.rs
//! simbal_conformance::conformance_suite!(faer_f64, || Some(simbal_faer::Faer::<f64>::new()));
//! simbal_conformance::conformance_suite!(faer_f32, || Some(simbal_faer::Faer::<f32>::new()));
//! ```
//!
//! `$make` is anything callable as `Fn() -> Option<B>` (a closure, or a path such as
//! `super::make`); `None` means the backend is unavailable on this machine (a GPU backend
//! without an adapter): each test then prints a note and passes, unless the environment variable
//! `CI` is set, where it panics. It is called at least once per test and once per router a
//! check builds, so keep it cheap (clone a shared client). The instances it returns must share
//! their memory: a router borrows its backend while a pass is alive, so the suite reads a pass's
//! buffers through another instance.
//!
//! ## Layout
//!
//! One module per op, each holding that op's checks of every kind and an exported macro that
//! lists its tests (the op states only the list; the hidden `__conformance_op!` defines the
//! macro from it); [`conformance_suite!`] composes the macros into a module `$name` with one
//! submodule of tests per op (`faer_f64::router::agree_forward`, ...), so
//! `cargo test router::` runs one op's tests. An op's module is one file, or a folder with one
//! file per kind of check when it is large:
//!
//! | op | module | macro |
//! |---|---|---|
//! | routing and its backward | [`router`] (folder) | [`conformance_router!`] |
//! | SimBal | [`simbal`] (folder) | [`conformance_simbal!`] |
//! | load-balancing loss | [`lbl`] (folder) | [`conformance_lbl!`] |
//! | z-loss | [`zloss`] | [`conformance_zloss!`] |
//! | bias balancing | [`bias`] | [`conformance_bias!`] |
//! | statistics and metrics | [`stats`] (folder) | [`conformance_stats!`] |
//! | GEMM | [`gemm`] | [`conformance_gemm!`] |
//! | validation | [`validation`] | [`conformance_validation!`] |
//! | outside oracles (Megatron-Core, HF fixtures) | [`oracles`] | [`conformance_oracles!`] |
//!
//! The kinds, as test-name prefixes: `fd_` analytic gradients against central finite
//! differences (f64: `h = 1e-6`, FD tolerance 1e-6; f32 backends get a coarse check), kinks
//! rejected; `agree_` ops against `Reference<B::Elem>` (and `Reference<f64>`) at the SPEC
//! tolerance; `kernel_` every `Backend` kernel on its own, same comparison; `invariant_` SPEC
//! invariants on the backend; `error_` every `SimbalError` variant from a real call (and every
//! kernel's precondition function refusing wrong lengths); `fuzz_` arbitrary input to every
//! public entry point: `Err` or a finite result, never a panic. What the checks of one kind
//! share is in [`harness`], one module per kind beside the case generators and the runner: the
//! kernel and fuzz checks run through its drivers ([`harness::kernel::kernel_check`],
//! [`harness::fuzz::fuzz_check`]). The buffers of an op's kernels, and each kernel's arguments,
//! are written once for its kernel, error and fuzz checks: in a folder op's `bufs` module, in
//! the file of a one-file op.
//!
//! A new check goes into its op's module (its kind's file for a folder) and into that op's
//! list; a new op gets a module with its list, added to [`conformance_suite!`]. A backend can
//! also instantiate one op, e.g.
//! `mod faer_f64 { simbal_conformance::conformance_router!(|| ..); }`.
//!
//! Environment: `PROPTEST_CASES` overrides each property's case count;
//! `SIMBAL_CONFORMANCE_SEED` (a `u64`) varies the otherwise fixed random stream.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bias;
pub mod gemm;
pub mod harness;
pub mod lbl;
pub mod oracles;
pub mod router;
pub mod simbal;
pub mod stats;
pub mod validation;
pub mod zloss;

/// Expands to a module `$name` with one submodule of `#[test]`s per op, one test per
/// conformance check, on the backend that `$make` (an expression callable as
/// `Fn() -> Option<B>`) builds.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        #[allow(non_snake_case)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_router!($make);
            $crate::conformance_simbal!($make);
            $crate::conformance_lbl!($make);
            $crate::conformance_zloss!($make);
            $crate::conformance_bias!($make);
            $crate::conformance_stats!($make);
            $crate::conformance_gemm!($make);
            $crate::conformance_validation!($make);
            $crate::conformance_oracles!($make);
        }
    };
}

/// Implementation detail of the op modules, each of which states only its list of tests:
/// `__conformance_op! { /// docs.. conformance_gemm, gemm { kernel_gemm => kernel_gemm, .. } }`
/// defines the exported macro `conformance_gemm!` (with those docs), which expands to a module
/// `gemm` with one `#[test]` per `name => check`, each calling `$crate::gemm::check` on the
/// backend its argument `$make` builds.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_op {
    ($(#[$doc:meta])* $mac:ident, $op:ident { $($list:tt)* }) => {
        // `$` is passed on as a token, so the macro defined below can have metavariables.
        $crate::__conformance_op! { @ ($) $(#[$doc])* $mac, $op { $($list)* } }
    };
    (@ ($d:tt) $(#[$doc:meta])* $mac:ident, $op:ident {
        $($test:ident => $($check:ident)::+),* $(,)?
    }) => {
        $(#[$doc])*
        #[macro_export]
        macro_rules! $mac {
            ($d make:expr) => {
                mod $op {
                    #[allow(unused_imports)]
                    use super::*;
                    $(
                        #[test]
                        fn $test() {
                            let make = $d make;
                            $crate::$op::$($check)::+(&make);
                        }
                    )*
                }
            };
        }
    };
}
