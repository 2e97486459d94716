//! SimBal's errors (see [`crate::harness::errors`]): lengths, an overflowing value, a bad
//! `lambda`.

use super::bufs::Bufs;
use crate::harness::errors::{check, invalid, refused, setup, start};
use crate::harness::kernel::Zeros;
use crate::harness::util::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::{
    simbal_loss, Backend, LossConfig, RouterConfig, SimBalConfig, SimBalNorm, SimbalError,
    SimbalWorkspace, WeightLayout,
};

/// `LengthMismatch`: a weight or gradient that does not fit the workspace, and the SimBal
/// kernels' precondition functions.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "simbal::errors::length_mismatch";
    start!(N, make);
    let b = fresh(make);
    let (r, r5) = (up(&b, &[0.5; 6]).unwrap(), up(&b, &[0.0; 5]).unwrap());
    let mut g5 = up(&b, &[0.0; 5]).unwrap();
    let mut ws = SimbalWorkspace::new(&b, WeightLayout::DxE, 2, 3).unwrap();
    let lm = |what: &'static str| {
        move |e: &SimbalError| {
            *e == SimbalError::LengthMismatch {
                what,
                expected: 6,
                got: 5,
            }
        }
    };
    let cfg = SimBalConfig::default();
    check(
        N,
        "SimBal gradient",
        simbal_loss(
            &b,
            &cfg,
            view::<B>(&r),
            Some(view_mut::<B>(&mut g5)),
            &mut ws,
        )
        .map(|_| ()),
        lm("router gradient"),
    );
    check(
        N,
        "SimBal weight",
        simbal_loss(&b, &cfg, view::<B>(&r5), None, &mut ws).map(|_| ()),
        lm("router weight"),
    );
    // The kernels: D = 2, E = 3; each call has one buffer of the wrong length.
    let mut bufs = Bufs::new(2, 3, &Zeros(&b)).unwrap();
    bufs.gram = b.zeros(6).unwrap(); // D E, not E E
    refused(N, "simbal_residual", bufs.residual(&cfg).check(&b));
    bufs.norms = b.zeros(4).unwrap(); // not E
    refused(
        N,
        "normalize_columns",
        bufs.normalize(WeightLayout::DxE).check(&b),
    );
    refused(
        N,
        "scale_free_project",
        bufs.project(WeightLayout::DxE).check(&b),
    );
}

/// `Overflow`: SimBal of a weight beyond `sqrt(max)` (1e30 in f32, 1e200 in f64); the value is
/// refused, never returned as inf/NaN.
pub fn overflow<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "simbal::errors::overflow";
    start!(N, make);
    let big = if is_f64::<B::Elem>() { 1e200 } else { 1e30 };
    let b = fresh(make);
    let r = up(&b, &[big, 1.0, 0.0, big, 0.5, 0.25]).unwrap();
    let mut ws = SimbalWorkspace::new(&b, WeightLayout::DxE, 2, 3).unwrap();
    for norm in [SimBalNorm::L1, SimBalNorm::FrobeniusSq] {
        let cfg = SimBalConfig { lambda: 0.1, norm };
        check(
            N,
            &format!("SimBal {norm:?}"),
            simbal_loss(&b, &cfg, view::<B>(&r), None, &mut ws).map(|_| ()),
            |e| matches!(e, SimbalError::Overflow { .. }),
        );
    }
}

/// `InvalidCoefficient`: a negative `lambda` in the router's backward, an infinite one in
/// `simbal_loss`.
pub fn invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "simbal::errors::invalid_coefficient";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 3, 2);
    let sb = |lambda| {
        LossConfig::none().with_simbal(SimBalConfig {
            lambda,
            norm: SimBalNorm::L1,
        })
    };
    check(
        N,
        "lambda < 0",
        s.backward(&sb(-0.1), None),
        invalid("SimBal lambda", -0.1),
    );
    s.still_works(N);
    let mut ws = SimbalWorkspace::new(&s.io, WeightLayout::DxE, 2, 3).unwrap();
    let inf = SimBalConfig {
        lambda: f64::INFINITY,
        norm: SimBalNorm::L1,
    };
    check(
        N,
        "simbal_loss lambda inf",
        simbal_loss(&s.io, &inf, view::<B>(&s.r), None, &mut ws).map(|_| ()),
        invalid("SimBal lambda", f64::INFINITY),
    );
}
