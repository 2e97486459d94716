//! `simbal_loss` against the reference backend and the independent direct formulas
//! (`simbal_direct`), at the SPEC's tolerance.

use crate::harness::compare::CASES;
use crate::harness::fd::gram_margin;
use crate::harness::gen;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::simbal::reference::simbal_direct;
use simbal_core::{
    simbal_loss, Backend, Reference, Rng, Scalar, SimBalNorm, SimbalWorkspace, WeightLayout,
};

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
        let (min, rmax) = gram_margin(layout, d, e, r);
        if min < tol * (rmax * rmax * d as f64).max(1.0) {
            return Err(reject("SimBal L1: |G_ab| within rounding of 0"));
        }
    }
    Ok(())
}

/// `simbal_loss` in every norm and layout, value and gradient (added into a non-zero buffer),
/// against the reference backend and against the independent `simbal_direct` (in `B::Elem` and
/// in `f64`); also the reference's `simbal_loss` against `simbal_direct`.
pub fn loss<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::agree::loss";
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
            let mut ws = SimbalWorkspace::new(&b, layout, d, e).ctx("SimbalWorkspace::new")?;
            let rb = up(&b, &r).ctx("upload")?;
            let mut gb = up(&b, &g0).ctx("upload")?;
            let got = simbal_loss(
                &b,
                &cfg,
                view::<B>(&rb),
                with_grad.then_some(view_mut::<B>(&mut gb)),
                &mut ws,
            )
            .ctx("simbal_loss (backend)")?
            .to_f64_lossy();
            let got_g = down(&b, &gb).ctx("download")?;
            // Reference backend in B::Elem.
            let rf = Reference::<B::Elem>::new();
            let mut rws = SimbalWorkspace::new(&rf, layout, d, e).ctx("SimbalWorkspace::new")?;
            let mut rg: Vec<B::Elem> = to_elems(&g0);
            let want = simbal_loss(
                &rf,
                &cfg,
                &to_elems(&r),
                with_grad.then_some(&mut rg[..]),
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
