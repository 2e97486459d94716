//! The router on arbitrary input (strategies and the panic guard in [`crate::harness::fuzz`]):
//! every entry point of [`simbal_core::Router`] and its passes, and its kernels.

use crate::harness::fuzz::*;
use crate::harness::run::{read_backward, read_forward, read_logit_backward, Backward};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::router::kernels::{
    BackwardRequest, Dispatch, LblCoef, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::{Backend, Gemm, Router, Routing, RoutingStats, Scalar};

/// `Router::new`, `forward`, `forward_logits`, the backward of their passes, `resume`,
/// `routing`, `stats`, `stats_into`, `load_metrics`, `routing_entropy`, `set_config` on
/// arbitrary input.
pub fn router<B: Backend>(make: &dyn Fn() -> Option<B>) {
    // The name the check had before the suite was grouped by op: it seeds the random stream, and
    // this stream's share of cases that reach a backward clears the bar below in both
    // precisions (about 1 in 12 in f32).
    const NAME: &str = "fuzz::router";
    if acquire(make, NAME).is_none() {
        return;
    }
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            Just((n, d, e)),
            router_config(e),
            losses(),
            prop::option::of(stats()),
            any::<bool>(),
            pool(),
        )
    });
    let reached = std::sync::atomic::AtomicUsize::new(0);
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, d, e), cfg, losses, global, with_bias, pool) = &input;
        let (n, d, e) = (*n, *d, *e);
        let k = cfg.k;
        let f = Filler::new(pool);
        let created = guard("Router::new", &input, || Router::new(fresh(make), *cfg))?;
        let Ok(mut router) = created else {
            return Ok(());
        };
        let checked = cfg.check_finite;
        let io = fresh(make);
        let up_ = |v: Vec<f64>| up(&io, &v).ctx("upload");
        let x = up_(f.vals(mul(n, d)))?;
        let r = up_(f.vals(mul(d, e)))?;
        let z = up_(f.vals(mul(n, e)))?;
        let dw = up_(f.vals(mul(n, k)))?;
        let bias = if *with_bias {
            Some(up_(f.vals(Some(e)))?)
        } else {
            None
        };
        let (x, r, z, dw, bias) = (
            view::<B>(&x),
            view::<B>(&r),
            view::<B>(&z),
            view::<B>(&dw),
            opt_view::<B>(&bias),
        );
        let global = global.as_ref();
        // Outputs of a successful call must be finite when the check is on.
        let check_fwd = |routing: &Routing<B>, what: &str| -> CaseResult {
            if checked {
                let fw = read_forward(&io, routing).ctx("read forward")?;
                for (name, v) in [("logits", &fw.z), ("scores", &fw.p), ("gates", &fw.gates)] {
                    must_be_finite(&format!("{what}: {name}"), &input, v)?;
                }
            }
            Ok(())
        };
        let check_bwd = |what: &str, bwd: Backward| -> CaseResult {
            if checked {
                must_be_finite(&format!("{what}: loss values"), &input, &bwd.losses)?;
                for (name, v) in [("dZ", &bwd.dz), ("dX", &bwd.dx), ("dR", &bwd.dr)] {
                    must_be_finite(&format!("{what}: {name}"), &input, v)?;
                }
            }
            Ok(())
        };
        // Tokens path: the pass, then its backward.
        if let Ok(mut pass) = guard("forward", &input, || router.forward(x, r, bias))? {
            check_fwd(&pass, "forward")?;
            if let Ok(s) = guard("Pass::stats", &input, || pass.stats())? {
                if checked {
                    must_be_finite("stats score sums", &input, &s.score_sums)?;
                }
            }
            if let Ok(h) = guard("Pass::routing_entropy", &input, || pass.routing_entropy())? {
                if checked {
                    must_be_finite("routing_entropy", &input, &[h.to_f64_lossy()])?;
                }
            }
            if let Ok(g) = guard("backward", &input, || pass.backward(dw, losses, global))? {
                reached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                check_bwd("backward", read_backward(&io, &g).ctx("read backward")?)?;
            }
        }
        guard("load_metrics", &input, || router.load_metrics())?.ok();
        if let Ok(h) = guard("routing_entropy", &input, || router.routing_entropy())? {
            if checked {
                must_be_finite("routing_entropy", &input, &[h.to_f64_lossy()])?;
            }
        }
        // The backward apart from its forward.
        if let Ok(mut pass) = guard("resume", &input, || router.resume(x, r))? {
            if let Ok(g) = guard("resumed backward", &input, || {
                pass.backward(dw, losses, global)
            })? {
                check_bwd(
                    "resumed backward",
                    read_backward(&io, &g).ctx("read backward")?,
                )?;
            }
        }
        // Logits path.
        if let Ok(mut pass) = guard("forward_logits", &input, || router.forward_logits(z, bias))? {
            check_fwd(&pass, "forward_logits")?;
            if let Ok(g) = guard("backward from logits", &input, || {
                pass.backward(dw, losses, global)
            })? {
                let bwd = read_logit_backward(&io, &g).ctx("read backward")?;
                check_bwd("backward from logits", bwd)?;
            }
        }
        guard("stats_into", &input, || {
            let mut s = RoutingStats::empty(2);
            router.stats_into(&mut s)
        })?
        .ok();
        if let Ok(routing) = guard("routing", &input, || router.routing())? {
            check_fwd(routing, "routing")?;
        }
        // Reconfiguration with the same arbitrary config, then the routing.
        guard("set_config", &input, || router.set_config(*cfg))?.ok();
        guard("routing after set_config", &input, || {
            router.routing().is_ok()
        })?;
        Ok(())
    });
    // Not vacuous: some arbitrary cases must get all the way through a backward pass.
    let reached = reached.into_inner();
    assert!(
        reached * 20 >= cases(CASES) as usize,
        "{NAME}: only {reached} cases reached a successful backward; the fuzz is too hostile"
    );
}

/// `route` (from given logits and from tokens), `dispatch` and `router_backward` (without and
/// with LBL coefficients and reductions) on arbitrary shapes, lengths, indices and values,
/// each through its precondition function.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::fuzz::kernels";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            Just((n, d, e)),
            router_config(e),
            (dim(), any::<bool>(), any::<bool>(), dim()),
            select(vec![0.0, 1.0, 0.5, f64::NAN, 1e300]),
            pool(),
        )
    });
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, d, e), cfg, (gm, ta, tb, group_len), beta, pool) = &input;
        let (n, d, e, k, gl) = (*n, *d, *e, cfg.k, *group_len);
        let f = Filler::new(pool);
        let ub = |v: Vec<f64>| up(&b, &v).ctx("upload");
        let ui = |v: Vec<u32>| b.idx_upload(&v).ctx("idx_upload");
        // The logits GEMM's operands, of a fuzzed row count (and any `beta`).
        let mut g = Gemm::new(*gm, e, d).alpha(1.5).beta(*beta);
        g.trans_a = *ta;
        g.trans_b = *tb;
        let a = ub(f.vals(mul(*gm, d)))?;
        let bm = ub(f.vals(mul(d, e)))?;
        // route, from given logits.
        let zv = f.vals(mul(n, e));
        let biasv = f.vals(Some(e));
        let mut z = ub(zv.clone())?;
        let bias = ub(biasv.clone())?;
        let mut p = ub(f.vals(mul(n, e)))?;
        let mut idx = ui(f.idx(mul(n, k), e))?;
        let mut gates = ub(f.vals(mul(n, k)))?;
        let routed = guard("route (given logits)", &input, || {
            Route {
                cfg,
                n,
                logits: Logits::Given,
                bias: Some(view::<B>(&bias)),
                z: view_mut::<B>(&mut z),
                p: view_mut::<B>(&mut p),
                idx: idx_view_mut::<B>(&mut idx),
                gates: view_mut::<B>(&mut gates),
                request: RouteRequest::default(),
            }
            .check(&b)
            .and_then(|a| b.route(a))
        })?;
        if routed.is_ok()
            && cfg.validate().is_ok()
            && all_finite(&rounded::<B::Elem>(&zv))
            && all_finite(&rounded::<B::Elem>(&biasv))
            && fits::<B::Elem>(cfg.scale)
            && cfg.scale.abs() <= 1e30
        {
            must_be_finite("route scores", &input, &down(&b, &p).ctx("download")?)?;
            must_be_finite("route gates", &input, &down(&b, &gates).ctx("download")?)?;
        }
        // route, the logits GEMM of the fuzzed shape first.
        let mut zf = ub(f.vals(mul(*gm, e)))?;
        guard("route (logits from tokens)", &input, || {
            Route {
                cfg,
                n: *gm,
                logits: Logits::Tokens {
                    gemm: g,
                    x: view::<B>(&a),
                    r: view::<B>(&bm),
                },
                bias: Some(view::<B>(&bias)),
                z: view_mut::<B>(&mut zf),
                p: view_mut::<B>(&mut p),
                idx: idx_view_mut::<B>(&mut idx),
                gates: view_mut::<B>(&mut gates),
                request: RouteRequest { max_abs_z: true },
            }
            .check(&b)
            .and_then(|a| b.route(a))
        })?
        .ok();
        // dispatch.
        let mut dropped = ui(f.idx(mul(n, k), 2))?;
        let mut counts = ui(f.idx(Some(e), 3))?;
        let mut order = ui(f.idx(mul(n, k), 3))?;
        let mut offsets = ui(f.idx(e.checked_add(1), 3))?;
        guard("dispatch", &input, || {
            Dispatch {
                cfg,
                n,
                idx: idx_view::<B>(&idx),
                gates: view_mut::<B>(&mut gates),
                dropped: idx_view_mut::<B>(&mut dropped),
                counts: idx_view_mut::<B>(&mut counts),
                order: idx_view_mut::<B>(&mut order),
                offsets: idx_view_mut::<B>(&mut offsets),
            }
            .check(&b)
            .and_then(|a| b.dispatch(a))
        })?
        .ok();
        // router_backward, without LBL and reductions and with both.
        let dwb = ub(f.vals(mul(n, k)))?;
        let coef = ub(f.vals(mul(n / gl.max(1), e)))?;
        let mut dz = ub(f.vals(mul(n, e)))?;
        for with in [false, true] {
            guard("router_backward", &input, || {
                RouterBackward {
                    cfg,
                    n,
                    z: view::<B>(&z),
                    p: view::<B>(&p),
                    idx: idx_view::<B>(&idx),
                    gates: view::<B>(&gates),
                    dropped: idx_view::<B>(&dropped),
                    dw: view::<B>(&dwb),
                    lbl: with.then(|| LblCoef {
                        coef: view::<B>(&coef),
                        group_len: gl,
                    }),
                    z_coef: B::Elem::of(0.01),
                    dz: view_mut::<B>(&mut dz),
                    request: BackwardRequest {
                        lse_sq_sum: with,
                        max_abs_dz: with,
                    },
                }
                .check(&b)
                .and_then(|a| b.router_backward(a))
            })?
            .ok();
        }
        Ok(())
    });
}
