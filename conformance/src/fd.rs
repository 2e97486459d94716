//! Analytic gradients against central finite differences.
//!
//! The objective is the training objective of the SPEC's backward pass,
//! `f = sum_tj gates_tj * dW_tj + total auxiliary loss`, differentiated w.r.t. `X` and `R`
//! ([`router_objective`]) and w.r.t. `Z` on the logits path ([`logits_objective`]); SimBal alone
//! in every norm and layout has its own property ([`simbal_loss`]).
//!
//! Cases near a kink are rejected, never tolerated: a case is redrawn when the routing indices or
//! dropped flags at any `X ± h` (or `R ± h`, `Z ± h`) differ from those at the point itself (this
//! covers top-k, group admission and capacity dropping), and, for SimBal L1, when some `|G_ab|`
//! is within reach of a step (`|G_ab| < max(1e-4, 4 h max|R| + h^2)`).
//!
//! The FD tolerance here is NOT the SPEC's backend-agreement tolerance: it bounds the
//! truncation and rounding error of a central difference. In `f64` (the SPEC's FD setting),
//! `h = 1e-6` and the error `|fd - g| / max(1, |g|)` must stay below `1e-6`. Backends in `f32`
//! get a coarse sanity check with `h = 3e-3` and `2e-2`, which catches wrong formulas but not
//! rounding-level disagreement (that is the agreement checks' job).

use crate::gen::{self, Case, Data, Limits, LossSet};
use crate::util::*;
use proptest::prelude::*;
use simbal_core::{
    simbal_loss as core_simbal_loss, Backend, Rng, Router, Scalar, SimBalConfig, SimBalNorm,
    SimbalWorkspace, WeightLayout,
};

/// Step, tolerance and case count of the finite differences for an element type.
#[derive(Debug, Clone, Copy)]
pub struct FdParams {
    /// Step `h`.
    pub h: f64,
    /// Bound on `|fd - analytic| / max(1, |analytic|)`.
    pub tol: f64,
    /// Number of accepted cases per property.
    pub cases: u32,
}

/// The FD parameters for `T` (see the module docs).
pub fn params<T: Scalar>() -> FdParams {
    if is_f64::<T>() {
        FdParams {
            h: 1e-6,
            tol: 1e-6,
            cases: 48,
        }
    } else {
        FdParams {
            h: 3e-3,
            tol: 2e-2,
            cases: 24,
        }
    }
}

/// Value of the objective at one point with the routing it took.
struct Eval {
    f: f64,
    idx: Vec<u32>,
    dropped: Vec<u32>,
}

/// `sum gates * dW + total` of one forward/backward on `router` at `(x, r)`.
fn eval_tokens<B: Backend>(
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    x: &[f64],
    r: &[f64],
    dw: &[f64],
) -> Result<Eval, TestCaseError> {
    let b = router.backend();
    let xb = up(b, x).ctx("upload X")?;
    let rb = up(b, r).ctx("upload R")?;
    let dwb = up(b, dw).ctx("upload dW")?;
    let bias = match &data.bias {
        Some(v) => Some(up(b, v).ctx("upload bias")?),
        None => None,
    };
    router
        .forward(&xb, &rb, bias.as_ref(), case.n, case.d)
        .ctx("forward")?;
    let v = router
        .backward(&xb, &rb, &dwb, &case.losses, case.global(data))
        .ctx("backward")?;
    finish(router, dw, v.total.to_f64_lossy())
}

fn finish<B: Backend>(router: &Router<B>, dw: &[f64], total: f64) -> Result<Eval, TestCaseError> {
    let b = router.backend();
    let gates = down(b, router.gates().ctx("gates")?).ctx("download gates")?;
    let lin: f64 = gates.iter().zip(dw).map(|(g, w)| g * w).sum();
    Ok(Eval {
        f: lin + total,
        idx: down_idx(b, router.indices().ctx("indices")?).ctx("download indices")?,
        dropped: down_idx(b, router.dropped().ctx("dropped")?).ctx("download dropped")?,
    })
}

/// `sum gates * dW + total` on the logits path at `z`.
fn eval_logits<B: Backend>(
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    z: &[f64],
    dw: &[f64],
) -> Result<Eval, TestCaseError> {
    let b = router.backend();
    let zb = up(b, z).ctx("upload Z")?;
    let dwb = up(b, dw).ctx("upload dW")?;
    let bias = match &data.bias {
        Some(v) => Some(up(b, v).ctx("upload bias")?),
        None => None,
    };
    router
        .forward_logits(&zb, bias.as_ref(), case.n)
        .ctx("forward_logits")?;
    let v = router
        .backward_logits(&dwb, &case.losses, case.global(data))
        .ctx("backward_logits")?;
    finish(router, dw, v.total.to_f64_lossy())
}

/// Smallest `|G_ab|` of `G = R^T R - I` (`R` viewed `D x E`), and `max |R|`.
pub fn gram_margin(layout: WeightLayout, d: usize, e: usize, r: &[f64]) -> (f64, f64) {
    let (rs, cs) = simbal_core::ops::simbal::strides(layout, d, e);
    let mut min = f64::INFINITY;
    for a in 0..e {
        for b in 0..e {
            let s: f64 = (0..d)
                .map(|i| r[i * rs + a * cs] * r[i * rs + b * cs])
                .sum();
            let g = if a == b { s - 1.0 } else { s };
            min = min.min(g.abs());
        }
    }
    (min, r.iter().fold(0.0f64, |m, v| m.max(v.abs())))
}

/// Rejects SimBal L1 cases with some `|G_ab|` within reach of a step of size `h`.
fn reject_l1_kink(
    simbal: Option<SimBalConfig>,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
    h: f64,
) -> CaseResult {
    if let Some(SimBalConfig {
        norm: SimBalNorm::L1,
        ..
    }) = simbal
    {
        let (min, rmax) = gram_margin(layout, d, e, r);
        if min < (4.0 * h * rmax + h * h).max(1e-4) {
            return Err(reject("SimBal L1: some |G_ab| is near 0"));
        }
    }
    Ok(())
}

/// Compares the central difference of `eval` along every coordinate of `point` with `grad`.
fn check_coords<T: Scalar>(
    what: &str,
    p: FdParams,
    point: &[f64],
    grad: &[f64],
    base: &Eval,
    mut eval: impl FnMut(&[f64]) -> Result<Eval, TestCaseError>,
) -> CaseResult {
    for i in 0..point.len() {
        let mut plus = point.to_vec();
        let mut minus = point.to_vec();
        plus[i] = T::of(point[i] + p.h).to_f64_lossy();
        minus[i] = T::of(point[i] - p.h).to_f64_lossy();
        let ep = eval(&plus)?;
        let em = eval(&minus)?;
        if ep.idx != base.idx
            || em.idx != base.idx
            || ep.dropped != base.dropped
            || em.dropped != base.dropped
        {
            return Err(reject("a routing decision changes within +-h"));
        }
        let fd = (ep.f - em.f) / (plus[i] - minus[i]);
        let err = (fd - grad[i]).abs() / grad[i].abs().max(1.0);
        if err.is_nan() || err > p.tol {
            return Err(fail(format!(
                "d objective / d {what}[{i}]: analytic {}, central difference {fd} (h = {}), error {err:.3e} > FD tol {:.0e}\n  analytic: {grad:?}",
                grad[i], p.h, p.tol
            )));
        }
    }
    Ok(())
}

/// `sum(W * dW) + losses` w.r.t. `X` and `R`: every router configuration and every loss.
/// Runs on the backend; in `f32` with the coarse parameters of [`params`].
pub fn router_objective<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fd::router_objective";
    if acquire(make, NAME).is_none() {
        return;
    }
    let p = params::<B::Elem>();
    let lim = Limits { n: 5, d: 4, e: 6 };
    let strategy = prop_oneof![
        2 => gen::case(lim, LossSet::All).boxed(),
        1 => gen::hard_case(LossSet::All).boxed(),
    ];
    run_prop(NAME, p.cases * 3 / 2, strategy, |case| {
        let data = case.data();
        let x = rounded::<B::Elem>(&data.x);
        let r = rounded::<B::Elem>(&data.r);
        let dw = rounded::<B::Elem>(&data.dw);
        reject_l1_kink(case.losses.simbal, case.cfg.layout, case.d, case.e, &r, p.h)?;
        let mut router = Router::new(fresh(make), case.cfg).ctx("Router::new")?;
        let base = eval_tokens(&mut router, &case, &data, &x, &r, &dw)?;
        let b = router.backend();
        let dx = down(b, router.dx().ctx("dx")?).ctx("download dX")?;
        let dr = down(b, router.dr().ctx("dr")?).ctx("download dR")?;
        check_coords::<B::Elem>("X", p, &x, &dx, &base, |xp| {
            eval_tokens(&mut router, &case, &data, xp, &r, &dw)
        })?;
        check_coords::<B::Elem>("R", p, &r, &dr, &base, |rp| {
            eval_tokens(&mut router, &case, &data, &x, rp, &dw)
        })
    });
}

/// `sum(W * dW) + LBL + z-loss` w.r.t. the logits `Z` (forward_logits / backward_logits).
pub fn logits_objective<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fd::logits_objective";
    if acquire(make, NAME).is_none() {
        return;
    }
    let p = params::<B::Elem>();
    let strategy = prop_oneof![
        2 => gen::case(gen::SMALL, LossSet::NoSimBal).boxed(),
        1 => gen::hard_case(LossSet::NoSimBal).boxed(),
    ];
    run_prop(NAME, p.cases * 3 / 2, strategy, |case| {
        let data = case.data();
        let z = rounded::<B::Elem>(&data.z);
        let dw = rounded::<B::Elem>(&data.dw);
        let mut router = Router::new(fresh(make), case.cfg).ctx("Router::new")?;
        let base = eval_logits(&mut router, &case, &data, &z, &dw)?;
        let dz = down(router.backend(), router.dz().ctx("dz")?).ctx("download dZ")?;
        check_coords::<B::Elem>("Z", p, &z, &dz, &base, |zp| {
            eval_logits(&mut router, &case, &data, zp, &dw)
        })
    });
}

/// `simbal_loss` alone, every norm and layout, `D < E` and `D >= E`, against central
/// differences of its value w.r.t. `R`.
pub fn simbal_loss<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fd::simbal_loss";
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
        let mut ws = SimbalWorkspace::new(&b, d, e).ctx("SimbalWorkspace::new")?;
        let loss = |r: &[f64], ws: &mut SimbalWorkspace<B>, grad: Option<&mut B::Buf>| {
            let rb = up(&b, r).ctx("upload R")?;
            core_simbal_loss(&b, &cfg, layout, d, e, &rb, grad, ws)
                .map(|v| v.to_f64_lossy())
                .ctx("simbal_loss")
        };
        let mut g = b.zeros(d * e).ctx("zeros")?;
        let f0 = loss(&r, &mut ws, Some(&mut g))?;
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
