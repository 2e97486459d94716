//! Backend against reference at the SPEC's tolerances, op by op: `B` is compared with
//! `Reference<B::Elem>` at `B::Elem::CONFORMANCE_TOL` relative to the output's scale
//! (`max(1, max |reference|)`), and, as a cross-check of the reference in `f32`, with
//! `Reference<f64>` at the same tolerance. Indices, dropped flags, counts, dispatch order and
//! offsets must be identical.
//!
//! Cases whose routing is within rounding of a tie are redrawn (see
//! [`crate::run::routing_margin`]): a margin below the tolerance means two correct backends may
//! legitimately pick differently. Exact ties are covered by [`crate::invariants::ties`].

use crate::gen::{self, Case, Data, LossSet};
use crate::run::{self, routing_margin, Backward, Forward, Inputs};
use crate::util::*;
use proptest::prelude::*;
use simbal_core::ops::simbal::simbal_direct;
use simbal_core::{
    simbal_loss, Backend, Reference, Rng, Router, Scalar, SimBalNorm, SimbalWorkspace, WeightLayout,
};

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

/// Runs `f` on a fresh router of `make`'s backend for `case`.
fn on<B: Backend, R>(
    b: B,
    case: &Case,
    data: &Data,
    f: impl FnOnce(&mut Router<B>, &Inputs<B>) -> simbal_core::Result<R>,
) -> Result<R, TestCaseError> {
    let inp = Inputs::new(&b, data).ctx("upload")?;
    let mut router = Router::new(b, case.cfg).ctx("Router::new")?;
    f(&mut router, &inp).ctx("router op")
}

/// The case's data rounded to `T`, so every backend and reference sees the same numbers.
fn data_in<T: Scalar>(case: &Case) -> Data {
    let mut d = case.data();
    d.x = rounded::<T>(&d.x);
    d.r = rounded::<T>(&d.r);
    d.z = rounded::<T>(&d.z);
    d.dw = rounded::<T>(&d.dw);
    d.bias = d.bias.map(|b| rounded::<T>(&b));
    d
}

/// Redraws cases within rounding of a routing tie.
fn reject_near_tie(case: &Case, data: &Data, f64_fwd: &Forward, tol: f64) -> CaseResult {
    let m = routing_margin(
        &case.cfg,
        case.n,
        &f64_fwd.p,
        data.bias.as_deref(),
        &f64_fwd.idx,
    );
    if m < tol {
        Err(reject(format!("routing margin {m:.2e} below tolerance")))
    } else {
        Ok(())
    }
}

/// Forward from tokens (`Router::forward`): logits, scores, indices, gates, dropped flags,
/// counts, dispatch plan.
pub fn forward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    tokens_path::<B>(make, "agree::forward", false);
}

/// Backward from tokens (`Router::backward` and `Router::step`): `dZ`, `dX`, `dR` and every loss
/// value, every loss configuration.
pub fn backward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    tokens_path::<B>(make, "agree::backward", true);
}

fn tokens_path<B: Backend>(make: &dyn Fn() -> Option<B>, name: &str, with_backward: bool) {
    if acquire(make, name).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = prop_oneof![
        2 => gen::case(gen::SMALL, LossSet::All).boxed(),
        1 => gen::hard_case(LossSet::All).boxed(),
    ];
    run_prop(name, CASES * 3 / 2, strategy, |case| {
        let data = data_in::<B::Elem>(&case);
        let (f64_fwd, f64_bwd) = on(Reference::<f64>::new(), &case, &data, |r, i| {
            run::step(r, &case, &data, i)
        })?;
        reject_near_tie(&case, &data, &f64_fwd, tol)?;
        let (ref_fwd, ref_bwd) = on(Reference::<B::Elem>::new(), &case, &data, |r, i| {
            run::step(r, &case, &data, i)
        })?;
        let (got_fwd, got_bwd) = if with_backward {
            // Through `Router::step`, the one-call form.
            on(fresh(make), &case, &data, |r, i| {
                let v = r.step(
                    &i.x,
                    &i.r,
                    i.bias.as_ref(),
                    &i.dw,
                    &case.losses,
                    case.global(&data),
                    case.n,
                    case.d,
                )?;
                let fwd = run::read_forward(r)?;
                let b = r.backend();
                Ok((
                    fwd,
                    Backward {
                        losses: run::loss_array(&v),
                        dz: down(b, r.dz()?)?,
                        dx: down(b, r.dx()?)?,
                        dr: down(b, r.dr()?)?,
                    },
                ))
            })?
        } else {
            on(fresh(make), &case, &data, |r, i| {
                run::step(r, &case, &data, i)
            })?
        };
        forward_close("backend vs reference:", &got_fwd, &ref_fwd, tol)?;
        forward_close("backend vs f64 reference:", &got_fwd, &f64_fwd, tol)?;
        if with_backward {
            backward_close("backend vs reference:", &got_bwd, &ref_bwd, tol)?;
            backward_close("backend vs f64 reference:", &got_bwd, &f64_bwd, tol)?;
        }
        Ok(())
    });
}

/// `Router::forward_logits` and `Router::backward_logits`: everything the forward gives, `dZ`
/// and the LBL and z-loss values.
pub fn logits_path<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "agree::logits_path";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = prop_oneof![
        2 => gen::case(gen::SMALL, LossSet::NoSimBal).boxed(),
        1 => gen::hard_case(LossSet::NoSimBal).boxed(),
    ];
    run_prop(NAME, CASES * 3 / 2, strategy, |case| {
        let data = data_in::<B::Elem>(&case);
        let go = |r: &mut Router<_>, i: &Inputs<_>| run::step_logits(r, &case, &data, i);
        let (f64_fwd, f64_bwd) = on(Reference::<f64>::new(), &case, &data, |r, i| {
            run::step_logits(r, &case, &data, i)
        })?;
        reject_near_tie(&case, &data, &f64_fwd, tol)?;
        let (ref_fwd, ref_bwd) = on(Reference::<B::Elem>::new(), &case, &data, go)?;
        let (got_fwd, got_bwd) = on(fresh(make), &case, &data, |r, i| {
            run::step_logits(r, &case, &data, i)
        })?;
        forward_close("backend vs reference:", &got_fwd, &ref_fwd, tol)?;
        forward_close("backend vs f64 reference:", &got_fwd, &f64_fwd, tol)?;
        backward_close("backend vs reference:", &got_bwd, &ref_bwd, tol)?;
        backward_close("backend vs f64 reference:", &got_bwd, &f64_bwd, tol)
    });
}

/// `Router::stats` (counts, tokens and dropped exactly, score sums to tolerance),
/// `Router::load_metrics` and `Router::routing_entropy`.
pub fn stats_and_metrics<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "agree::stats_and_metrics";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, CASES, gen::case(gen::SMALL, LossSet::All), |case| {
        let data = data_in::<B::Elem>(&case);
        let go = |r: &mut Router<_>, i: &Inputs<_>| {
            r.forward(&i.x, &i.r, i.bias.as_ref(), case.n, case.d)?;
            Ok((run::read_forward(r)?, run::stats(r)?))
        };
        let (f64_fwd, f64_stats) = on(Reference::<f64>::new(), &case, &data, |r, i| {
            r.forward(&i.x, &i.r, i.bias.as_ref(), case.n, case.d)?;
            Ok((run::read_forward(r)?, run::stats(r)?))
        })?;
        reject_near_tie(&case, &data, &f64_fwd, tol)?;
        let (_, want) = on(Reference::<B::Elem>::new(), &case, &data, go)?;
        let (_, got) = on(fresh(make), &case, &data, |r, i| {
            r.forward(&i.x, &i.r, i.bias.as_ref(), case.n, case.d)?;
            Ok((run::read_forward(r)?, run::stats(r)?))
        })?;
        for (tag, want) in [("reference", &want), ("f64 reference", &f64_stats)] {
            same(
                &format!("stats counts vs {tag}"),
                &got.0.counts,
                &want.0.counts,
            )?;
            same(
                &format!("stats tokens, dropped vs {tag}"),
                &[got.0.tokens, got.0.dropped],
                &[want.0.tokens, want.0.dropped],
            )?;
            close(
                &format!("stats score sums vs {tag}"),
                &got.0.score_sums,
                &want.0.score_sums,
                tol,
            )?;
            ensure(got.1 == want.1, || {
                format!(
                    "load metrics differ from the {tag}: {:?} vs {:?}",
                    got.1, want.1
                )
            })?;
            close1(&format!("routing entropy vs {tag}"), got.2, want.2, tol)?;
        }
        Ok(())
    });
}

/// Rejects SimBal L1 cases with some `|G_ab|` within rounding of 0 (its sign may flip).
fn reject_gram_kink(
    norm: SimBalNorm,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
    tol: f64,
) -> CaseResult {
    if norm == SimBalNorm::L1 {
        let (min, rmax) = crate::fd::gram_margin(layout, d, e, r);
        if min < tol * (rmax * rmax * d as f64).max(1.0) {
            return Err(reject("SimBal L1: |G_ab| within rounding of 0"));
        }
    }
    Ok(())
}

/// `simbal_loss` in every norm and layout, value and gradient (added into a non-zero buffer),
/// against the reference backend and against the independent `simbal_direct` (in `B::Elem` and
/// in `f64`); also the reference's `simbal_loss` against `simbal_direct`.
pub fn simbal<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "agree::simbal";
    let Some(b) = acquire(make, NAME) else {
        return;
    };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        gen::weight_shape(),
        gen::simbal_config(),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        any::<bool>(),
    );
    run_prop(
        NAME,
        CASES,
        strategy,
        |((d, e, seed), cfg, layout, with_grad)| {
            let mut rng = Rng::new(seed);
            let r = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 0.7));
            let g0 = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
            reject_gram_kink(cfg.norm, layout, d, e, &r, tol)?;
            // Backend.
            let mut ws = SimbalWorkspace::new(&b, d, e).ctx("SimbalWorkspace::new")?;
            let rb = up(&b, &r).ctx("upload")?;
            let mut gb = up(&b, &g0).ctx("upload")?;
            let got = simbal_loss(
                &b,
                &cfg,
                layout,
                d,
                e,
                &rb,
                with_grad.then_some(&mut gb),
                &mut ws,
            )
            .ctx("simbal_loss (backend)")?
            .to_f64_lossy();
            let got_g = down(&b, &gb).ctx("download")?;
            // Reference backend in B::Elem.
            let rf = Reference::<B::Elem>::new();
            let mut rws = SimbalWorkspace::new(&rf, d, e).ctx("SimbalWorkspace::new")?;
            let mut rg: Vec<B::Elem> = to_elems(&g0);
            let want = simbal_loss(
                &rf,
                &cfg,
                layout,
                d,
                e,
                &to_elems(&r),
                with_grad.then_some(&mut rg),
                &mut rws,
            )
            .ctx("simbal_loss (reference)")?
            .to_f64_lossy();
            let want_g = to_f64(&rg);
            // Independent direct formulas, in B::Elem and in f64.
            let mut dg: Vec<B::Elem> = to_elems(&g0);
            let direct = simbal_direct(
                &cfg,
                layout,
                d,
                e,
                &to_elems::<B::Elem>(&r),
                with_grad.then_some(&mut dg[..]),
            )
            .to_f64_lossy();
            let mut dg64 = g0.clone();
            let direct64 =
                simbal_direct(&cfg, layout, d, e, &r, with_grad.then_some(&mut dg64[..]));
            let tag = format!("{:?} {layout:?} d={d} e={e}", cfg.norm);
            close1(&format!("{tag} loss: backend vs reference"), got, want, tol)?;
            close1(
                &format!("{tag} loss: backend vs simbal_direct"),
                got,
                direct,
                tol,
            )?;
            close1(
                &format!("{tag} loss: backend vs f64 simbal_direct"),
                got,
                direct64,
                tol,
            )?;
            close1(
                &format!("{tag} loss: reference vs simbal_direct"),
                want,
                direct,
                tol,
            )?;
            close(
                &format!("{tag} grad: backend vs reference"),
                &got_g,
                &want_g,
                tol,
            )?;
            close(
                &format!("{tag} grad: backend vs simbal_direct"),
                &got_g,
                &to_f64(&dg),
                tol,
            )?;
            close(
                &format!("{tag} grad: backend vs f64 simbal_direct"),
                &got_g,
                &dg64,
                tol,
            )?;
            close(
                &format!("{tag} grad: reference vs simbal_direct"),
                &want_g,
                &to_f64(&dg),
                tol,
            )?;
            if !with_grad {
                same(
                    &format!("{tag} grad buffer untouched without grad"),
                    &got_g,
                    &g0,
                )?;
            }
            Ok(())
        },
    );
}
