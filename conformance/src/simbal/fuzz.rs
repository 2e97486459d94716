//! SimBal on arbitrary input (see [`crate::harness::fuzz`]): `simbal_loss` (with its
//! workspace) and the SimBal kernels.

use crate::harness::fuzz::*;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::{
    simbal_loss, Backend, Scalar, SimBalConfig, SimBalNorm, SimbalWorkspace, WeightLayout,
};

/// Any SimBal norm.
fn norm() -> impl Strategy<Value = SimBalNorm> {
    prop_oneof![
        Just(SimBalNorm::L1),
        Just(SimBalNorm::FrobeniusSq),
        Just(SimBalNorm::ScaleFree)
    ]
}

/// Any weight layout.
fn layout() -> impl Strategy<Value = WeightLayout> {
    prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)]
}

/// `SimbalWorkspace::new` and `simbal_loss` on arbitrary shapes, coefficients, lengths and
/// values: `Err`, or a finite value and gradient whenever every input is finite.
pub fn loss<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::fuzz::loss";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        (dim(), dim()),
        (coef(), norm()),
        layout(),
        any::<bool>(),
        pool(),
    );
    run_prop(NAME, CASES, strategy, |input| {
        let ((d, e), (lambda, norm), layout, with_grad, pool) = &input;
        let (d, e) = (*d, *e);
        let f = Filler::new(pool);
        let cfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let rv = rounded::<B::Elem>(&f.vals(mul(d, e)));
        let gv = rounded::<B::Elem>(&f.vals(mul(d, e)));
        let r = up(&b, &rv).ctx("upload")?;
        let mut g = up(&b, &gv).ctx("upload")?;
        // The workspace allocates its shape: the fuzzed one when small or overflowing (an
        // error before any allocation), else a 1 x 1 one (then `r` does not fit it).
        let fits_len = |x: Option<usize>| x.is_none_or(|l| l <= MAX_LEN);
        let shape = if fits_len(mul(d, e)) && fits_len(mul(e, e)) {
            (d, e)
        } else {
            (1, 1)
        };
        let made = guard("SimbalWorkspace::new", &input, || {
            SimbalWorkspace::new(&b, *layout, shape.0, shape.1)
        })?;
        let mut ws = match made {
            Ok(ws) => ws,
            Err(_) => SimbalWorkspace::new(&b, *layout, 1, 1).ctx("workspace")?,
        };
        let res = guard("simbal_loss", &input, || {
            simbal_loss(
                &b,
                &cfg,
                view::<B>(&r),
                with_grad.then_some(view_mut::<B>(&mut g)),
                &mut ws,
            )
        })?;
        if let Ok(l) = res {
            if all_finite(&rv) && all_finite(&gv) && fits::<B::Elem>(*lambda) {
                must_be_finite("simbal_loss value", &input, &[l.to_f64_lossy()])?;
                must_be_finite(
                    "simbal_loss gradient",
                    &input,
                    &down(&b, &g).ctx("download")?,
                )?;
            }
        }
        Ok(())
    });
}

/// `simbal_residual`, `normalize_columns` and `scale_free_project` on arbitrary shapes,
/// lengths and values, each through its precondition function.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::fuzz::kernels";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = ((dim(), dim()), (coef(), norm()), layout(), pool());
    run_prop(NAME, CASES, strategy, |input| {
        let ((d, e), (lambda, norm), layout, pool) = &input;
        let (d, e) = (*d, *e);
        let f = Filler::new(pool);
        let ub = |v: Vec<f64>| up(&b, &v).ctx("upload");
        let scfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let mut gram = ub(f.vals(mul(e, e)))?;
        guard("simbal_residual", &input, || {
            SimbalResidual {
                cfg: &scfg,
                e,
                gram: view_mut::<B>(&mut gram),
            }
            .check(&b)
            .and_then(|a| b.simbal_residual(a))
        })?
        .ok();
        let r = ub(f.vals(mul(d, e)))?;
        let mut norms = ub(f.vals(Some(e)))?;
        let mut rn = ub(f.vals(mul(d, e)))?;
        guard("normalize_columns", &input, || {
            NormalizeColumns {
                layout: *layout,
                d,
                e,
                r: view::<B>(&r),
                norms: view_mut::<B>(&mut norms),
                rn: view_mut::<B>(&mut rn),
            }
            .check(&b)
            .and_then(|a| b.normalize_columns(a))
        })?
        .ok();
        let gv = ub(f.vals(mul(d, e)))?;
        let mut grad = ub(f.vals(mul(d, e)))?;
        guard("scale_free_project", &input, || {
            ScaleFreeProject {
                layout: *layout,
                d,
                e,
                rn: view::<B>(&rn),
                norms: view::<B>(&norms),
                g: view::<B>(&gv),
                grad: view_mut::<B>(&mut grad),
            }
            .check(&b)
            .and_then(|a| b.scale_free_project(a))
        })?
        .ok();
        Ok(())
    });
}
