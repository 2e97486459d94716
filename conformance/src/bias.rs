//! Aux-loss-free bias balancing ([`simbal_core::update_bias`]): repeated updates balance a skewed
//! router, a bad rate is refused, arbitrary input never panics. (The bias has no kernel of its
//! own; the selection bias in routing is checked with the router.)

use crate::harness::errors::{check, invalid, start};
use crate::harness::fuzz::{all_finite, coef, fuzz_check, pool, stats};
use crate::harness::gen;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::{
    update_bias, Backend, BiasUpdateConfig, LoadMetrics, Rng, Router, RouterConfig, RoutingStats,
    ScoreFn,
};

crate::__conformance_op! {
    /// The bias update's tests, as a module `bias` of `#[test]`s on the backend `$make` builds (see
    /// [`crate::conformance_suite!`]).
    conformance_bias, bias {
        invariant_update_balances => invariant_update_balances,
        error_invalid_coefficient => error_invalid_coefficient,
        fuzz_update => fuzz_update,
    }
}

/// Repeated aux-loss-free bias updates from the router's own statistics lower `MaxVio` of a
/// router that sends (almost) every token to expert 0; the centred option keeps the mean bias at
/// 0.
pub fn invariant_update_balances<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "bias::invariant_update_balances";
    if acquire(make, NAME).is_none() {
        return;
    }
    let (n, d, e) = (64, 4, 4);
    let mut rng = Rng::new(11);
    let mut x = gen::normal(&mut rng, n * d, 1.0);
    for t in 0..n {
        x[t * d] = 1.0;
    }
    let mut r = gen::normal(&mut rng, d * e, 0.3);
    r[0] = 3.0; // feature 0 (always 1) pushes every token to expert 0
    for score in [ScoreFn::Sigmoid, ScoreFn::Softmax] {
        for centred in [false, true] {
            let b = fresh(make);
            let xb = up(&b, &x).expect("upload");
            let rb = up(&b, &r).expect("upload");
            let mut bias = b.zeros(e).expect("zeros");
            let mut router =
                Router::new(b, RouterConfig::new(e, 1).with_score(score)).expect("Router::new");
            let ucfg = BiasUpdateConfig {
                rate: 0.02,
                centred,
            };
            let mut first = None;
            let mut last = 0.0;
            for _ in 0..150 {
                let pass = router
                    .forward(view::<B>(&xb), view::<B>(&rb), Some(view::<B>(&bias)))
                    .expect("forward");
                let s = pass.stats().expect("stats");
                last = LoadMetrics::from_counts(&s.counts).max_vio;
                first.get_or_insert(last);
                update_bias(router.backend(), &ucfg, &s, view_mut::<B>(&mut bias))
                    .expect("update_bias");
                if centred {
                    let mean: f64 =
                        down(router.backend(), &bias).unwrap().iter().sum::<f64>() / e as f64;
                    assert!(mean.abs() < 1e-5, "{NAME}: centred bias has mean {mean}");
                }
            }
            let first = first.unwrap();
            assert!(
                first >= 2.0,
                "{NAME}: the router is not skewed (MaxVio {first})"
            );
            assert!(
                last < 0.5 * first,
                "{NAME}: {score:?} centred={centred}: MaxVio went from {first} to {last}"
            );
        }
    }
}

/// `InvalidCoefficient`: a negative update rate.
pub fn error_invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "bias::error_invalid_coefficient";
    start!(N, make);
    let b = fresh(make);
    let mut bias = b.zeros(3).unwrap();
    let stats = RoutingStats::empty(3);
    let cfg = BiasUpdateConfig {
        rate: -1e-3,
        centred: false,
    };
    check(
        N,
        "bias rate < 0",
        update_bias(&b, &cfg, &stats, view_mut::<B>(&mut bias)),
        invalid("bias update rate", -1e-3),
    );
}

/// `update_bias` from arbitrary statistics, rates and biases: `Err`, or a finite bias whenever
/// the bias and the rate are finite.
pub fn fuzz_update<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "bias::fuzz_update";
    let strategy = (((coef(), any::<bool>()), stats()), pool());
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((rate, centred), s1) = input;
        let mut bias = cx.up(Some(s1.counts.len()))?;
        let bv = cx.down(&bias)?;
        let ucfg = BiasUpdateConfig {
            rate: *rate,
            centred: *centred,
        };
        let b = cx.b;
        if cx
            .guard("update_bias", || {
                update_bias(b, &ucfg, s1, view_mut::<B>(&mut bias))
            })?
            .is_ok()
            && all_finite(&bv)
            && rate.abs() <= 1e30
        {
            cx.finite("update_bias result", &cx.down(&bias)?)?;
        }
        Ok(())
    });
}
