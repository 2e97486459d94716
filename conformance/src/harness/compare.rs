//! Comparison of whole router passes, backend against reference: `B` is compared with
//! `Reference<B::Elem>` at `B::Elem::CONFORMANCE_TOL` relative to the output's scale
//! (`max(1, max |reference|)`), and, as a cross-check of the reference in `f32`, with
//! `Reference<f64>` at the same tolerance. Indices, dropped flags, counts, dispatch order and
//! offsets must be identical.
//!
//! Cases whose routing is within rounding of a tie are redrawn (see
//! [`crate::harness::run::routing_margin`]): a margin below the tolerance means two correct
//! backends may legitimately pick differently. Exact ties are covered by the router's
//! invariant checks.

use crate::harness::gen::{Case, Data};
use crate::harness::run::{routing_margin, Backward, Forward, Inputs};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{Backend, Router, Scalar};

/// Number of cases of each agreement property.
pub const CASES: u32 = 64;

/// Compares two forward passes: floats to `tol`, everything discrete exactly.
pub fn forward_close(tag: &str, got: &Forward, want: &Forward, tol: f64) -> CaseResult {
    same(&format!("{tag} indices"), &got.idx, &want.idx)?;
    same(&format!("{tag} dropped flags"), &got.dropped, &want.dropped)?;
    same(&format!("{tag} counts"), &got.counts, &want.counts)?;
    same(
        &format!("{tag} dispatch offsets"),
        &got.offsets,
        &want.offsets,
    )?;
    same(&format!("{tag} dispatch order"), &got.order, &want.order)?;
    close(&format!("{tag} logits"), &got.z, &want.z, tol)?;
    close(&format!("{tag} scores"), &got.p, &want.p, tol)?;
    close(&format!("{tag} gates"), &got.gates, &want.gates, tol)
}

/// Compares two backward passes to `tol`.
pub fn backward_close(tag: &str, got: &Backward, want: &Backward, tol: f64) -> CaseResult {
    let names = ["SimBal value", "LBL value", "z-loss value", "total loss"];
    for (i, name) in names.iter().enumerate() {
        close1(&format!("{tag} {name}"), got.losses[i], want.losses[i], tol)?;
    }
    close(&format!("{tag} dZ"), &got.dz, &want.dz, tol)?;
    close(&format!("{tag} dX"), &got.dx, &want.dx, tol)?;
    close(&format!("{tag} dR"), &got.dr, &want.dr, tol)
}

/// What a check runs on a router: the transfer instance, the router and the uploaded inputs.
pub type Op<'a, B, R> = &'a dyn Fn(&B, &mut Router<B>, &Inputs<B>) -> simbal_core::Result<R>;

/// Runs `f` on a fresh router for `case` of the backend `mk` builds (one more instance of it
/// does the transfers).
pub fn on<B: Backend, R>(
    mk: impl Fn() -> B,
    case: &Case,
    data: &Data,
    f: Op<'_, B, R>,
) -> Result<R, TestCaseError> {
    let io = mk();
    let inp = Inputs::new(&io, data).ctx("upload")?;
    let mut router = Router::new(mk(), case.cfg).ctx("Router::new")?;
    f(&io, &mut router, &inp).ctx("router op")
}

/// The case's data rounded to `T`, so every backend and reference sees the same numbers.
pub fn data_in<T: Scalar>(case: &Case) -> Data {
    let mut d = case.data();
    d.x = rounded::<T>(&d.x);
    d.r = rounded::<T>(&d.r);
    d.z = rounded::<T>(&d.z);
    d.dw = rounded::<T>(&d.dw);
    d.bias = d.bias.map(|b| rounded::<T>(&b));
    d
}

/// Redraws cases within rounding of a routing tie.
pub fn reject_near_tie(case: &Case, data: &Data, f64_fwd: &Forward, tol: f64) -> CaseResult {
    let m = routing_margin(
        &case.cfg,
        case.n,
        &f64_fwd.p,
        data.bias.as_deref(),
        &f64_fwd.idx,
    );
    if m < tol {
        return Err(reject(format!("routing margin {m:.2e} below tolerance")));
    }
    if let simbal_core::Selection::Sinkhorn { tol: st, max_iters } = case.cfg.selection {
        // The balanced scores decide the selection; the iteration amplifies rounding, so the
        // margin (relative to each row's largest balanced score) must clear 100x the tolerance.
        let (e, k) = (case.e, case.k);
        let mut b = vec![0.0; f64_fwd.z.len()];
        simbal_core::router::sinkhorn::sinkhorn_scores(e, &f64_fwd.z, st, max_iters, &mut b);
        for row in b.chunks_exact(e.max(1)) {
            let mut v = row.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            // Every adjacent pair among the first k + 1 (the indices are ranked, best first).
            let floor = 100.0 * tol * v[0].abs().max(f64::MIN_POSITIVE);
            if (0..k.min(e - 1)).any(|r| v[r] - v[r + 1] < floor) {
                return Err(reject("Sinkhorn selection near a tie".to_string()));
            }
        }
    }
    Ok(())
}
