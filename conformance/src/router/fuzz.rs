//! The router on arbitrary input (strategies and the panic guard in [`crate::harness::fuzz`]):
//! every entry point of [`simbal_core::Router`] and its passes, and its kernels.

use super::bufs::{Bufs, Shape};
use crate::harness::fuzz::*;
use crate::harness::kernel::call;
use crate::harness::run::{read_backward, read_forward, read_logit_backward, Backward};
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::memory::view;
use simbal_core::router::kernels::{BackwardRequest, RouteRequest};
use simbal_core::{Backend, Gemm, Router, Routing, RoutingStats, Scalar};

/// `Router::new`, `forward`, `forward_logits`, the backward of their passes, `resume`,
/// `routing`, `stats`, `stats_into`, `load_metrics`, `routing_entropy`, `set_config` on
/// arbitrary input.
pub fn router<B: Backend>(make: &dyn Fn() -> Option<B>) {
    // The name the check had before the suite was grouped by op: it seeds the random stream, and
    // this stream's share of cases that reach a backward clears the bar below in both
    // precisions (about 1 in 12 in f32).
    const NAME: &str = "fuzz::router";
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            (
                Just((n, d, e)),
                router_config(e),
                losses(),
                prop::option::of(stats()),
                any::<bool>(),
            ),
            pool(),
        )
    });
    let reached = std::sync::atomic::AtomicUsize::new(0);
    let ran = fuzz_check(make, NAME, strategy, |cx, input| {
        let ((n, d, e), cfg, losses, global, with_bias) = input;
        let (n, d, e, k, io) = (*n, *d, *e, cfg.k, cx.b);
        let created = cx.guard("Router::new", || Router::new(fresh(make), *cfg))?;
        let Ok(mut router) = created else {
            return Ok(());
        };
        let checked = cfg.check_finite;
        let (x, r, z) = (cx.up(mul(n, d))?, cx.up(mul(d, e))?, cx.up(mul(n, e))?);
        let dw = cx.up(mul(n, k))?;
        let bias = if *with_bias {
            Some(cx.up(Some(e))?)
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
                let fw = read_forward(io, routing).ctx("read forward")?;
                for (name, v) in [("logits", &fw.z), ("scores", &fw.p), ("gates", &fw.gates)] {
                    cx.finite(&format!("{what}: {name}"), v)?;
                }
            }
            Ok(())
        };
        let check_bwd = |what: &str, bwd: Backward| -> CaseResult {
            if checked {
                cx.finite(&format!("{what}: loss values"), &bwd.losses)?;
                for (name, v) in [("dZ", &bwd.dz), ("dX", &bwd.dx), ("dR", &bwd.dr)] {
                    cx.finite(&format!("{what}: {name}"), v)?;
                }
            }
            Ok(())
        };
        // Tokens path: the pass, then its backward.
        // A forward is checked once `check` (or the pass's first read) has looked at its
        // inputs: on a device the checks wait for that read.
        if let Ok(mut pass) = cx.guard("forward", || {
            let mut pass = router.forward(x, r, bias)?;
            pass.check().map(|()| pass)
        })? {
            check_fwd(&pass, "forward")?;
            if let Ok(s) = cx.guard("Pass::stats", || pass.stats())? {
                if checked {
                    cx.finite("stats score sums", &s.score_sums)?;
                }
            }
            if let Ok(h) = cx.guard("Pass::routing_entropy", || pass.routing_entropy())? {
                if checked {
                    cx.finite("routing_entropy", &[h.to_f64_lossy()])?;
                }
            }
            if let Ok(g) = cx.guard("backward", || pass.backward(dw, losses, global))? {
                reached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                check_bwd("backward", read_backward(io, &g).ctx("read backward")?)?;
            }
        }
        cx.guard("load_metrics", || router.load_metrics())?.ok();
        if let Ok(h) = cx.guard("routing_entropy", || router.routing_entropy())? {
            if checked {
                cx.finite("routing_entropy", &[h.to_f64_lossy()])?;
            }
        }
        // The backward apart from its forward.
        if let Ok(mut pass) = cx.guard("resume", || router.resume(x, r))? {
            if let Ok(g) = cx.guard("resumed backward", || pass.backward(dw, losses, global))? {
                check_bwd(
                    "resumed backward",
                    read_backward(io, &g).ctx("read backward")?,
                )?;
            }
        }
        // Logits path.
        if let Ok(mut pass) = cx.guard("forward_logits", || {
            let mut pass = router.forward_logits(z, bias)?;
            pass.check().map(|()| pass)
        })? {
            check_fwd(&pass, "forward_logits")?;
            if let Ok(g) = cx.guard("backward from logits", || pass.backward(dw, losses, global))? {
                let bwd = read_logit_backward(io, &g).ctx("read backward")?;
                check_bwd("backward from logits", bwd)?;
            }
        }
        cx.guard("stats_into", || {
            let mut s = RoutingStats::empty(2);
            router.stats_into(&mut s)
        })?
        .ok();
        if let Ok(routing) = cx.guard("routing", || router.routing())? {
            check_fwd(routing, "routing")?;
        }
        // Reconfiguration with the same arbitrary config, then the routing.
        cx.guard("set_config", || router.set_config(*cfg))?.ok();
        cx.guard("routing after set_config", || router.routing().is_ok())?;
        Ok(())
    });
    // Not vacuous: some arbitrary cases must get all the way through a backward pass.
    let reached = reached.into_inner();
    assert!(
        !ran || reached * 20 >= cases(CASES) as usize,
        "{NAME}: only {reached} cases reached a successful backward; the fuzz is too hostile"
    );
}

/// `route` (from given logits and from tokens), `dispatch` and `router_backward` (without and
/// with LBL coefficients and reductions) on arbitrary shapes, lengths, indices and values,
/// each through its precondition function, on one set of buffers (each kernel's outputs the
/// next one's inputs).
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::fuzz::kernels";
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            (
                Just((n, d, e)),
                router_config(e),
                (dim(), any::<bool>(), any::<bool>(), dim()),
                select(vec![0.0, 1.0, 0.5, f64::NAN, 1e300]),
            ),
            pool(),
        )
    });
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((n, d, e), cfg, (gm, ta, tb, group_len), beta) = input;
        let (n, d, e, b) = (*n, *d, *e, cx.b);
        // The logits GEMM of a fuzzed row count (and any `beta`).
        let mut g = Gemm::new(*gm, e, d).alpha(1.5).beta(*beta);
        (g.trans_a, g.trans_b) = (*ta, *tb);
        let shape = Shape {
            d,
            rows: *gm,
            group_len: *group_len,
            ..Shape::of(cfg, n)
        };
        let mut bufs = Bufs::new(shape, cx).ctx("upload")?;
        let z = cx.down(&bufs.z)?;
        let bias = bufs.bias.as_ref().map_or(Ok(Vec::new()), |v| cx.down(v))?;
        let given = RouteRequest::default();
        let routed = cx.guard("route (given logits)", || {
            call!(b, route(bufs.route(cfg, None, given)))
        })?;
        if routed.is_ok()
            && cfg.validate().is_ok()
            && all_finite(&z)
            && all_finite(&bias)
            && fits::<B::Elem>(cfg.scale)
            && cfg.scale.abs() <= 1e30
        {
            cx.finite("route scores", &cx.down(&bufs.p)?)?;
            cx.finite("route gates", &cx.down(&bufs.gates)?)?;
        }
        let tokens = RouteRequest { max_abs_z: true };
        cx.guard("route (logits from tokens)", || {
            call!(b, route(bufs.route(cfg, Some(g), tokens)))
        })?
        .ok();
        cx.guard("dispatch", || call!(b, dispatch(bufs.dispatch(cfg))))?
            .ok();
        // router_backward, without LBL and reductions and with both.
        for with in [false, true] {
            cx.guard("router_backward", || {
                let request = BackwardRequest {
                    lse_sq_sum: with,
                    max_abs_dz: with,
                };
                call!(b, router_backward(bufs.backward(cfg, with, 0.01, request)))
            })?
            .ok();
        }
        Ok(())
    });
}
