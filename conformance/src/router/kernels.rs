//! The router's kernels on their own (see [`crate::harness::kernel`]): `route` from given
//! logits and from tokens, `dispatch`, and `router_backward` without and with its reductions.

use super::bufs::{Bufs, Shape};
use crate::harness::gen::{self, LossSet};
use crate::harness::kernel::{call, kernel_check, three, Zeros, R};
use crate::harness::run::routing_margin;
use crate::harness::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::router::kernels::{BackwardRequest, RouteRequest};
use simbal_core::router::score::score_row;
use simbal_core::router::select::{gates_row, select_row};
use simbal_core::{
    Backend, DropPolicy, Gemm, Reference, Rng, RouterConfig, Scalar, SimbalError, WeightLayout,
};

/// Router configurations and logits of random cases, as kernel inputs.
fn routing_input() -> impl Strategy<Value = (usize, RouterConfig, u64, bool)> {
    gen::case(gen::SMALL, LossSet::NoSimBal).prop_map(|c| (c.n, c.cfg, c.seed, c.bias))
}

type Routed = (Vec<f64>, Vec<u32>, Vec<f64>);

/// Logits, scores, indices (then the plain top-k when the selection has a bias or groups),
/// gates and `max |Z|` of a `route` run.
type Fused = (Vec<f64>, Vec<f64>, Vec<u32>, Vec<f64>, Option<f64>);

/// Where the logits of a `route` run come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Given, `n x E`.
    Given(&'a [f64]),
    /// Computed from tokens `x` (`n x d`) and the weight `r` in the configuration's layout.
    Tokens {
        d: usize,
        x: &'a [f64],
        r: &'a [f64],
    },
}

/// `route` of `n` tokens: logits, scores, indices, gates and `max |Z|` (asked when `max`).
fn route_any<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    n: usize,
    source: Source<'_>,
    bias: Option<&[f64]>,
    max: bool,
) -> R<Fused> {
    let has_plain = bias.is_some() || cfg.groups.is_some();
    let shape = Shape {
        has_plain,
        ..Shape::of(cfg, n)
    };
    let (mut b, gemm) = match source {
        Source::Given(z) => {
            let mut b = Bufs::new(shape, &Zeros(c))?;
            b.z = up(c, z)?;
            (b, None)
        }
        Source::Tokens { d, x, r } => {
            let mut b = Bufs::new(Shape { d, ..shape }, &Zeros(c))?;
            (b.x, b.r) = (up(c, x)?, up(c, r)?);
            let g = match cfg.layout {
                WeightLayout::DxE => Gemm::new(n, cfg.experts, d),
                WeightLayout::ExD => Gemm::new(n, cfg.experts, d).tb(),
            };
            (b, Some(g))
        }
    };
    b.bias = up_opt(c, bias)?;
    let request = RouteRequest { max_abs_z: max };
    let sums = call!(c, route(b.route(cfg, gemm, request)))?;
    let z = if gemm.is_some() { &b.zt } else { &b.z };
    let mut idx = down_idx(c, &b.idx)?;
    if has_plain {
        idx.extend(down_idx(c, &b.plain)?);
    }
    Ok((
        down(c, z)?,
        down(c, &b.p)?,
        idx,
        down(c, &b.gates)?,
        match sums.max_abs_z {
            Some(v) => Some(c.read_value(&v)?.to_f64_lossy()),
            None => None,
        },
    ))
}

/// `route` from given logits `z`, no reduction asked: scores, indices and gates; an error when
/// the kernel changed the logits or returned `max |Z|` unasked.
fn route_run<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    n: usize,
    z: &[f64],
    bias: Option<&[f64]>,
) -> R<Routed> {
    let (zb, p, idx, gates, max) = route_any(c, cfg, n, Source::Given(z), bias, false)?;
    let wrong = |message: &str| SimbalError::Backend {
        message: message.into(),
    };
    if max.is_some() {
        return Err(wrong("route returned max |Z| without being asked"));
    }
    if zb != rounded::<C::Elem>(z) {
        return Err(wrong("route changed the given logits"));
    }
    Ok((p, idx, gates))
}

/// `route` from given logits: scores, indices and gates for every score function,
/// renormalisation, scale, group limit and selection bias; the logits left as given and no
/// reduction returned unasked.
pub fn route_given<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::kernels::route_given";
    kernel_check(make, NAME, routing_input(), |b, tol, case| {
        let (n, cfg, seed, with_bias) = case;
        let e = cfg.experts;
        let mut rng = Rng::new(seed);
        let z = rounded::<B::Elem>(&gen::normal(&mut rng, n * e, 1.5));
        let bias = with_bias.then(|| rounded::<B::Elem>(&gen::normal(&mut rng, e, 0.2)));
        let bias = bias.as_deref();
        let (got, want, want64) = three!(b, route_run(&cfg, n, &z, bias));
        let cfg_nocap = RouterConfig {
            capacity: None,
            ..cfg
        };
        let m = routing_margin(&cfg_nocap, n, &want64.0, bias, &want64.1);
        if m < tol {
            return Err(reject("near a selection tie"));
        }
        vs_refs(&want, &want64, |tag, w| {
            same(&format!("indices vs {tag}"), &got.1, &w.1)?;
            close(&format!("scores vs {tag}"), &got.0, &w.0, tol)?;
            close(&format!("gates vs {tag}"), &got.2, &w.2, tol)
        })
    });
}

type Dispatched = (Vec<f64>, Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);

pub(crate) fn dispatch_run<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    n: usize,
    idx: &[u32],
    gates: &[f64],
) -> R<Dispatched> {
    let mut b = Bufs::new(Shape::of(cfg, n), &Zeros(c))?;
    (b.idx, b.gates) = (c.idx_upload(idx)?, up(c, gates)?);
    b.dropped = c.idx_upload(&vec![7; n * cfg.k])?;
    call!(c, dispatch(b.dispatch(cfg)))?;
    let offsets = down_idx(c, &b.offsets)?;
    let mut order = down_idx(c, &b.order)?;
    order.truncate(offsets[cfg.experts] as usize);
    Ok((
        down(c, &b.gates)?,
        down_idx(c, &b.dropped)?,
        down_idx(c, &b.counts)?,
        offsets,
        order,
    ))
}

/// `dispatch`: capacity dropping under both policies (gates on a coarse grid, so exact ties
/// occur and must go to the lower token index) and the dispatch plan.
pub fn dispatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::kernels::dispatch";
    let strategy = (
        gen::shape(gen::Limits { n: 8, d: 1, e: 6 }),
        prop::option::of((
            select(vec![0.25, 0.5, 0.75, 1.0, 1.5]),
            prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
        )),
        any::<u64>(),
    );
    kernel_check(make, NAME, strategy, |b, _, ((n, _, e, k), cap, seed)| {
        let mut cfg = RouterConfig::new(e, k);
        if let Some((f, p)) = cap {
            cfg = cfg.with_capacity(f, p);
        }
        let mut rng = Rng::new(seed);
        let mut idx = Vec::with_capacity(n * k);
        for _ in 0..n {
            // k distinct experts per token, in random order.
            let mut pool: Vec<u32> = (0..e as u32).collect();
            for j in 0..k {
                let pick = j + rng.below(e - j);
                pool.swap(j, pick);
                idx.push(pool[j]);
            }
        }
        let gates: Vec<f64> = (0..n * k)
            .map(|_| (1 + rng.below(4)) as f64 * 0.125)
            .collect();
        let (got, want, want64) = three!(b, dispatch_run(&cfg, n, &idx, &gates));
        vs_refs(&want, &want64, |tag, w| {
            same(&format!("dropped vs {tag}"), &got.1, &w.1)?;
            same(&format!("counts vs {tag}"), &got.2, &w.2)?;
            same(&format!("offsets vs {tag}"), &got.3, &w.3)?;
            same(&format!("order vs {tag}"), &got.4, &w.4)?;
            same(&format!("gates vs {tag}"), &got.0, &w.0)
        })
    });
}

/// Inputs of the backward row kernel.
#[derive(Debug, Clone)]
pub(crate) struct BwdIn {
    pub(crate) n: usize,
    pub(crate) z: Vec<f64>,
    pub(crate) p: Vec<f64>,
    pub(crate) idx: Vec<u32>,
    pub(crate) gates: Vec<f64>,
    pub(crate) dropped: Vec<u32>,
    pub(crate) dw: Vec<f64>,
    pub(crate) lbl: Option<(Vec<f64>, usize)>,
    /// Per-token group ids (masked tokens included) and their number, instead of runs.
    pub(crate) ids: Option<(Vec<u32>, usize)>,
    /// LBL coefficients through the score normalisation.
    pub(crate) normalize: bool,
    pub(crate) z_coef: f64,
}

/// `router_backward` on `x` with the reductions of `request`: `(dz, sum lse^2, max |dz|)`.
fn bwd_run<C: Backend>(c: &C, cfg: &RouterConfig, x: &BwdIn, request: BackwardRequest) -> R<Sums> {
    let group_len = x.lbl.as_ref().map_or(1, |l| l.1);
    let mut b = Bufs::new(
        Shape {
            group_len,
            id_groups: x.ids.as_ref().map(|i| i.1),
            normalize: x.normalize,
            ..Shape::of(cfg, x.n)
        },
        &Zeros(c),
    )?;
    if let Some((ids, _)) = &x.ids {
        b.ids = c.idx_upload(ids)?;
    }
    (b.z, b.p, b.gates, b.dw) = (up(c, &x.z)?, up(c, &x.p)?, up(c, &x.gates)?, up(c, &x.dw)?);
    (b.idx, b.dropped) = (c.idx_upload(&x.idx)?, c.idx_upload(&x.dropped)?);
    if let Some((coef, _)) = &x.lbl {
        b.coef = up(c, coef)?;
    }
    let lbl = x.lbl.is_some();
    let sums = call!(c, router_backward(b.backward(cfg, lbl, x.z_coef, request)))?;
    let f = |v: Option<C::Value>| -> R<Option<f64>> {
        Ok(match v {
            Some(v) => Some(c.read_value(&v)?.to_f64_lossy()),
            None => None,
        })
    };
    Ok((down(c, &b.dz)?, f(sums.lse_sq_sum)?, f(sums.max_abs_dz)?))
}

/// `router_backward` with no reduction asked: `dz` alone (none returned, or it is an error).
pub(crate) fn bwd_dz_run<C: Backend>(c: &C, cfg: &RouterConfig, x: &BwdIn) -> R<Vec<f64>> {
    let (dz, lse, max) = bwd_run(c, cfg, x, BackwardRequest::default())?;
    if lse.is_some() || max.is_some() {
        return Err(SimbalError::Backend {
            message: "router_backward returned a reduction it was not asked for".into(),
        });
    }
    Ok(dz)
}

/// Inputs of the backward row kernel for `n` tokens under `cfg`, rounded to `T`: logits,
/// the scores, top-k and gates the reference forward gives them, dropped slots (`with_drop`),
/// a gate gradient, per-sequence LBL coefficients (`with_lbl`) and the z-loss coefficient
/// (`with_z`).
fn bwd_input<T: Scalar>(
    n: usize,
    cfg: &RouterConfig,
    seed: u64,
    with_lbl: bool,
    with_z: bool,
    with_drop: bool,
) -> BwdIn {
    let (e, k) = (cfg.experts, cfg.k);
    let mut rng = Rng::new(seed);
    let z = rounded::<T>(&gen::normal(&mut rng, n * e, 1.5));
    let mut p = vec![0.0; n * e];
    let mut idx = vec![0u32; n * k];
    let mut gates = vec![0.0; n * k];
    for t in 0..n {
        let (zr, pr) = (&z[t * e..(t + 1) * e], &mut p[t * e..(t + 1) * e]);
        score_row(cfg.score, zr, pr);
        select_row(cfg, pr, None, &mut idx[t * k..(t + 1) * k]);
        gates_row(
            cfg,
            pr,
            &idx[t * k..(t + 1) * k],
            &mut gates[t * k..(t + 1) * k],
        );
    }
    let p = rounded::<T>(&p);
    let gates = rounded::<T>(&gates);
    let dropped: Vec<u32> = (0..n * k)
        .map(|_| u32::from(with_drop && rng.below(3) == 0))
        .collect();
    let dw = rounded::<T>(&gen::normal(&mut rng, n * k, 1.0));
    // Tokens in runs, or (one case in three) in groups by id with about a third masked.
    let ids = (rng.below(2) == 0).then(|| {
        let count = [1, 1, 2, 3][rng.below(4)];
        let ids: Vec<u32> = (0..n)
            .map(|_| match rng.below(3) {
                0 => simbal_core::tokens::MASKED,
                _ => rng.below(count) as u32,
            })
            .collect();
        (ids, count)
    });
    let lbl = with_lbl.then(|| {
        let divs = gen::divisors(n);
        let group_len = divs[rng.below(divs.len())];
        let groups = ids.as_ref().map_or(n / group_len, |i| i.1);
        (
            rounded::<T>(&gen::normal(&mut rng, groups * e, 0.1)),
            group_len,
        )
    });
    let normalize = !cfg.score.is_distribution() && rng.below(2) == 0;
    let z_coef = if with_z { 0.02 } else { 0.0 };
    BwdIn {
        n,
        z,
        p,
        idx,
        gates,
        dropped,
        dw,
        lbl,
        ids,
        normalize,
        z_coef,
    }
}

/// `router_backward` with no reduction asked: gate gradient with and without
/// renormalisation, both score functions, dropped slots, per-sequence LBL coefficients and the
/// z-loss term.
pub fn router_backward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::kernels::router_backward";
    let strategy = (routing_input(), any::<bool>(), any::<bool>(), any::<bool>());
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((n, cfg, seed, _), with_lbl, with_z, with_drop) = case;
        let input = bwd_input::<B::Elem>(n, &cfg, seed, with_lbl, with_z, with_drop);
        let (got, want, want64) = three!(b, bwd_dz_run(&cfg, &input));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("dZ vs {tag}"), &got, w, tol)
        })
    });
}

/// Shapes `(n, d, e, k)` of the fused kernels' cases: mostly small, a quarter with over a
/// thousand tokens, so a backend that splits rows into blocks does.
fn fused_shape() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    prop_oneof![
        3 => (1..=24usize, 1..=8usize, 1..=8usize),
        1 => (1024..=1100usize, 1..=12usize, 1..=16usize),
    ]
    .prop_flat_map(|(n, d, e)| (Just(n), Just(d), Just(e), 1..=e))
}

type Sums = (Vec<f64>, Option<f64>, Option<f64>);

/// A kernel's `max |v|` reduction: exactly the largest `|v|` of the `values` it returned when
/// `asked`, absent otherwise.
fn max_as_asked(what: &str, asked: bool, got: Option<f64>, values: &[f64]) -> CaseResult {
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    match (asked, got) {
        (true, Some(g)) => ensure(g == largest, || {
            format!("max {what} {g}, but the largest {what} returned is {largest}")
        }),
        (false, None) => Ok(()),
        (_, g) => Err(fail(format!("max {what} asked {asked}, got {g:?}"))),
    }
}

/// `router_backward` with the request's reductions: `dz` as the reference's, `sum lse^2` as its
/// `lse_sq_sum`, `max |dz|` exactly the largest `|dz|` returned, each only when asked; over a
/// thousand tokens in a quarter of the cases.
pub fn router_backward_sums<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::kernels::router_backward_sums";
    let strategy = fused_shape().prop_flat_map(|(n, _, e, k)| {
        (
            Just(n),
            gen::router_config(e, k),
            any::<u64>(),
            any::<[bool; 5]>(),
        )
    });
    kernel_check(make, NAME, strategy, |b, tol, (n, cfg, seed, flags)| {
        let [with_lbl, with_z, with_drop, lse, max] = flags;
        let input = bwd_input::<B::Elem>(n, &cfg, seed, with_lbl, with_z, with_drop);
        let request = BackwardRequest {
            lse_sq_sum: lse,
            max_abs_dz: max,
        };
        let got = bwd_run(b, &cfg, &input, request).ctx("backend")?;
        let want = bwd_run(&Reference::<f64>::new(), &cfg, &input, request).ctx("f64 reference")?;
        close("dZ vs f64 reference", &got.0, &want.0, tol)?;
        match (lse, got.1, want.1) {
            (true, Some(g), Some(w)) => close1("sum lse^2 vs f64 reference", g, w, tol)?,
            (false, None, _) => {}
            (_, g, _) => return Err(fail(format!("sum lse^2 asked {lse}, got {g:?}"))),
        }
        max_as_asked("|dz|", max, got.2, &got.0)
    });
}

/// `route` with logits from tokens: logits as the reference GEMM gives them, and those logits
/// routed exactly as the reference routes them (indices exactly, scores and gates to
/// tolerance), in both weight layouts, with and without a bias; `max |Z|` exactly the largest
/// `|Z|` returned, only when asked.
pub fn route_tokens<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::kernels::route_tokens";
    let strategy = fused_shape().prop_flat_map(|(n, d, e, k)| {
        (
            Just((n, d)),
            gen::router_config(e, k),
            any::<bool>(),
            any::<[bool; 2]>(),
            any::<u64>(),
        )
    });
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((n, d), cfg, exd, [with_bias, max], seed) = case;
        let e = cfg.experts;
        let layout = if exd {
            WeightLayout::ExD
        } else {
            WeightLayout::DxE
        };
        let cfg = cfg.with_layout(layout);
        let mut rng = Rng::new(seed);
        let x = rounded::<B::Elem>(&gen::normal(&mut rng, n * d, 1.0));
        let r = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0 / (d as f64).sqrt()));
        let bias = with_bias.then(|| rounded::<B::Elem>(&gen::normal(&mut rng, e, 0.2)));
        let bias = bias.as_deref();
        let source = Source::Tokens { d, x: &x, r: &r };
        let got = route_any(b, &cfg, n, source, bias, max).ctx("backend")?;
        let want =
            route_any(&Reference::<f64>::new(), &cfg, n, source, bias, max).ctx("f64 reference")?;
        close("logits vs f64 reference", &got.0, &want.0, tol)?;
        // Route the backend's own logits on the reference: the same selection, exactly.
        let z = rounded::<B::Elem>(&got.0);
        let (wp, widx, wg) =
            route_run(&Reference::<B::Elem>::new(), &cfg, n, &z, bias).ctx("reference routing")?;
        let cfg_nocap = RouterConfig {
            capacity: None,
            ..cfg
        };
        let m = routing_margin(&cfg_nocap, n, &wp, bias, &widx);
        if m < tol {
            return Err(reject("near a selection tie"));
        }
        same("indices vs the reference routing", &got.2, &widx)?;
        close("scores vs the reference routing", &got.1, &wp, tol)?;
        close("gates vs the reference routing", &got.3, &wg, tol)?;
        max_as_asked("|Z|", max, got.4, &got.0)
    });
}
