//! `simbal_loss` against central finite differences of its value (machinery and tolerances in
//! [`crate::harness::fd`]).

use crate::harness::fd::{check_coords, params, reject_l1_kink, Eval};
use crate::harness::gen;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::{
    simbal_loss as core_simbal_loss, Backend, Rng, Scalar, SimbalWorkspace, WeightLayout,
};

/// `simbal_loss` alone, every norm and layout, `D < E` and `D >= E`, against central
/// differences of its value w.r.t. `R`.
pub fn loss<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::fd::loss";
    let Some(b) = acquire(make, NAME) else {
        return;
    };
    let p = params::<B::Elem>();
    let strategy = (
        gen::weight_shape(),
        gen::simbal_config(),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
    );
    run_prop(NAME, p.cases, strategy, |((d, e, seed), cfg, layout)| {
        let r = rounded::<B::Elem>(&gen::normal(&mut Rng::new(seed), d * e, 0.7));
        reject_l1_kink(Some(cfg), layout, d, e, &r, p.h)?;
        let mut ws = SimbalWorkspace::new(&b, layout, d, e).ctx("SimbalWorkspace::new")?;
        let loss = |r: &[f64], ws: &mut SimbalWorkspace<B>, grad: Option<&mut B::View>| {
            let rb = up(&b, r).ctx("upload R")?;
            core_simbal_loss(&b, &cfg, view::<B>(&rb), grad, ws)
                .map(|v| v.to_f64_lossy())
                .ctx("simbal_loss")
        };
        let mut g = b.zeros(d * e).ctx("zeros")?;
        let f0 = loss(&r, &mut ws, Some(view_mut::<B>(&mut g)))?;
        let grad = down(&b, &g).ctx("download grad")?;
        let base = Eval {
            f: f0,
            idx: Vec::new(),
            dropped: Vec::new(),
        };
        check_coords::<B::Elem>("R", p, &r, &grad, &base, |rp| {
            Ok(Eval {
                f: loss(rp, &mut ws, None)?,
                idx: Vec::new(),
                dropped: Vec::new(),
            })
        })
    });
}
