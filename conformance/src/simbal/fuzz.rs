//! SimBal on arbitrary input (see [`crate::harness::fuzz`]): `simbal_loss` (with its
//! workspace) and the SimBal kernels.

use super::bufs::Bufs;
use crate::harness::fuzz::*;
use crate::harness::kernel::call;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
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
    let strategy = (
        ((dim(), dim()), (coef(), norm()), layout(), any::<bool>()),
        pool(),
    );
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((d, e), (lambda, norm), layout, with_grad) = input;
        let (d, e, b) = (*d, *e, cx.b);
        let cfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let (r, mut g) = (cx.up(mul(d, e))?, cx.up(mul(d, e))?);
        let (rv, gv) = (cx.down(&r)?, cx.down(&g)?);
        // The workspace allocates its shape: the fuzzed one when small or overflowing (an
        // error before any allocation), else a 1 x 1 one (then `r` does not fit it).
        let fits_len = |x: Option<usize>| x.is_none_or(|l| l <= MAX_LEN);
        let shape = if fits_len(mul(d, e)) && fits_len(mul(e, e)) {
            (d, e)
        } else {
            (1, 1)
        };
        let made = cx.guard("SimbalWorkspace::new", || {
            SimbalWorkspace::new(b, *layout, shape.0, shape.1)
        })?;
        let mut ws = match made {
            Ok(ws) => ws,
            Err(_) => SimbalWorkspace::new(b, *layout, 1, 1).ctx("workspace")?,
        };
        let res = cx.guard("simbal_loss", || {
            let grad = with_grad.then_some(view_mut::<B>(&mut g));
            simbal_loss(b, &cfg, view::<B>(&r), grad, &mut ws)
        })?;
        if let Ok(l) = res {
            if all_finite(&rv) && all_finite(&gv) && fits::<B::Elem>(*lambda) {
                cx.finite("simbal_loss value", &[l.to_f64_lossy()])?;
                cx.finite("simbal_loss gradient", &cx.down(&g)?)?;
            }
        }
        Ok(())
    });
}

/// `simbal_residual`, `normalize_columns` and `scale_free_project` on arbitrary shapes,
/// lengths and values, each through its precondition function, on one set of buffers.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::fuzz::kernels";
    let strategy = (((dim(), dim()), (coef(), norm()), layout()), pool());
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((d, e), (lambda, norm), layout) = input;
        let (layout, b) = (*layout, cx.b);
        let scfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let mut bufs = Bufs::new(*d, *e, cx).ctx("upload")?;
        cx.guard("simbal_residual", || {
            call!(b, simbal_residual(bufs.residual(&scfg)))
        })?
        .ok();
        cx.guard("normalize_columns", || {
            call!(b, normalize_columns(bufs.normalize(layout)))
        })?
        .ok();
        cx.guard("scale_free_project", || {
            call!(b, scale_free_project(bufs.project(layout)))
        })?
        .ok();
        Ok(())
    });
}
