//! The router's passes against the references (see [`crate::harness::compare`]): forward from
//! tokens, the backward of its pass and the backward resumed apart from its forward, and both on
//! the logits path.

use crate::harness::compare::{backward_close, data_in, forward_close, on, reject_near_tie, CASES};
use crate::harness::gen::{self, LossSet};
use crate::harness::run::{self, Path};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{Backend, Reference, Scalar};

/// Forward from tokens (`Router::forward`, and the backward of its pass): logits, scores,
/// indices, gates, dropped flags, counts, dispatch plan.
pub fn forward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    path::<B>(make, "router::agree::forward", Path::Tokens, false);
}

/// Backward from tokens (through `Router::resume`, the backward apart from its forward): `dZ`,
/// `dX`, `dR` and every loss value, every loss configuration.
pub fn backward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    path::<B>(make, "router::agree::backward", Path::Resumed, true);
}

/// `Router::forward_logits` and the backward of its pass: everything the forward gives, `dZ`
/// and the LBL and z-loss values.
pub fn logits_path<B: Backend>(make: &dyn Fn() -> Option<B>) {
    path::<B>(make, "router::agree::logits_path", Path::Logits, true);
}

/// The backend along `path` against both references (which take the pass's own backward), the
/// forward always and the backward `with_backward`; random and hard cases, SimBal only from
/// tokens.
fn path<B: Backend>(make: &dyn Fn() -> Option<B>, name: &str, path: Path, with_backward: bool) {
    if acquire(make, name).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let (set, ref_path) = match path {
        Path::Logits => (LossSet::NoSimBal, Path::Logits),
        _ => (LossSet::All, Path::Tokens),
    };
    let strategy = prop_oneof![
        2 => gen::case(gen::SMALL, set).boxed(),
        1 => gen::hard_case(set).boxed(),
    ];
    run_prop(name, CASES * 3 / 2, strategy, |case| {
        let data = data_in::<B::Elem>(&case);
        let (f64_fwd, f64_bwd) = on(Reference::<f64>::new, &case, &data, &|io, r, i| {
            run::step(ref_path, io, r, &case, &data, i)
        })?;
        reject_near_tie(&case, &data, &f64_fwd, tol)?;
        let (ref_fwd, ref_bwd) = on(Reference::<B::Elem>::new, &case, &data, &|io, r, i| {
            run::step(ref_path, io, r, &case, &data, i)
        })?;
        let (got_fwd, got_bwd) = on(|| fresh(make), &case, &data, &|io, r, i| {
            run::step(path, io, r, &case, &data, i)
        })?;
        forward_close("backend vs reference:", &got_fwd, &ref_fwd, tol)?;
        forward_close("backend vs f64 reference:", &got_fwd, &f64_fwd, tol)?;
        if with_backward {
            backward_close("backend vs reference:", &got_bwd, &ref_bwd, tol)?;
            backward_close("backend vs f64 reference:", &got_bwd, &f64_bwd, tol)?;
        }
        Ok(())
    });
}
