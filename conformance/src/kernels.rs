//! Every [`Backend`] kernel on its own, against `Reference<B::Elem>` and `Reference<f64>` at
//! `B::Elem::CONFORMANCE_TOL` (discrete outputs exactly). Each kernel has one generic runner
//! used for the backend and both references, so all three see the same inputs.

use crate::gen::{self, LossSet};
use crate::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::config::{RouterConfig, ScoreFn};
use simbal_core::ops::lbl::LblScales;
use simbal_core::ops::score::score_row;
use simbal_core::ops::select::gates_row;
use simbal_core::{
    Backend, DropPolicy, Gemm, LblCoef, LblConfig, LblLevel, LblNormalization, Reference, Rng,
    Scalar, SimBalConfig, SimbalError, WeightLayout,
};

/// Number of cases of each kernel property.
pub const CASES: u32 = 48;

type R<T> = simbal_core::Result<T>;

/// Runs `$body` (a generic runner call) on the backend, `Reference<B::Elem>` and `Reference<f64>`.
macro_rules! three {
    ($b:expr, $f:ident ( $($arg:expr),* )) => {{
        let got = $f($b, $($arg),*).ctx(concat!(stringify!($f), " (backend)"))?;
        let want = $f(&Reference::<B::Elem>::new(), $($arg),*).ctx(concat!(stringify!($f), " (reference)"))?;
        let want64 = $f(&Reference::<f64>::new(), $($arg),*).ctx(concat!(stringify!($f), " (f64 reference)"))?;
        (got, want, want64)
    }};
}

fn gemm_run<C: Backend>(c: &C, g: &Gemm, a: &[f64], b: &[f64], c0: &[f64]) -> R<Vec<f64>> {
    let (ab, bb) = (up(c, a)?, up(c, b)?);
    let mut cb = up(c, c0)?;
    c.gemm(g, &ab, &bb, &mut cb)?;
    down(c, &cb)
}

/// `gemm` with every transpose combination, `alpha`, `beta` (`beta = 0` must ignore a NaN-filled
/// `C`) and shapes from 1 to 7 (`k` from 0).
pub fn gemm<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::gemm";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        (1..=7usize, 1..=7usize, 0..=7usize),
        (any::<bool>(), any::<bool>()),
        select(vec![1.0, -0.5, 2.0]),
        select(vec![0.0, 1.0, 0.5]),
        any::<u64>(),
    );
    run_prop(
        NAME,
        CASES,
        strategy,
        |((m, n, k), (ta, tb), alpha, beta, seed)| {
            let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
            g.trans_a = ta;
            g.trans_b = tb;
            let mut rng = Rng::new(seed);
            let a = rounded::<B::Elem>(&gen::normal(&mut rng, m * k, 1.0));
            let bm = rounded::<B::Elem>(&gen::normal(&mut rng, k * n, 1.0));
            let mut c0 = rounded::<B::Elem>(&gen::normal(&mut rng, m * n, 1.0));
            if beta == 0.0 {
                c0.iter_mut().for_each(|v| *v = f64::NAN);
            }
            let (got, want, want64) = three!(&b, gemm_run(&g, &a, &bm, &c0));
            close(&format!("{g:?} vs reference"), &got, &want, tol)?;
            close(&format!("{g:?} vs f64 reference"), &got, &want64, tol)
        },
    );
}

/// Router configurations and logits of random cases, as kernel inputs.
fn routing_input() -> impl Strategy<Value = (usize, RouterConfig, u64, bool)> {
    gen::case(gen::SMALL, LossSet::NoSimBal).prop_map(|c| (c.n, c.cfg, c.seed, c.bias))
}

type Routed = (Vec<f64>, Vec<u32>, Vec<f64>);

fn route_run<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    n: usize,
    z: &[f64],
    bias: Option<&[f64]>,
) -> R<Routed> {
    let (e, k) = (cfg.experts, cfg.k);
    let zb = up(c, z)?;
    let bb = match bias {
        Some(v) => Some(up(c, v)?),
        None => None,
    };
    let mut p = c.zeros(n * e)?;
    let mut idx = c.idx_zeros(n * k)?;
    let mut gates = c.zeros(n * k)?;
    c.route_rows(cfg, n, &zb, bb.as_ref(), &mut p, &mut idx, &mut gates)?;
    Ok((down(c, &p)?, down_idx(c, &idx)?, down(c, &gates)?))
}

/// `route_rows`: scores, indices and gates for every score function, renormalisation, scale,
/// group limit and selection bias.
pub fn route_rows<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::route_rows";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, CASES, routing_input(), |(n, cfg, seed, with_bias)| {
        let e = cfg.experts;
        let mut rng = Rng::new(seed);
        let z = rounded::<B::Elem>(&gen::normal(&mut rng, n * e, 1.5));
        let bias = with_bias.then(|| rounded::<B::Elem>(&gen::normal(&mut rng, e, 0.2)));
        let bias = bias.as_deref();
        let (got, want, want64) = three!(&b, route_run(&cfg, n, &z, bias));
        let cfg_nocap = RouterConfig {
            capacity: None,
            ..cfg
        };
        let m = crate::run::routing_margin(&cfg_nocap, n, &want64.0, bias, &want64.1);
        if m < tol {
            return Err(reject("near a selection tie"));
        }
        for (tag, w) in [("reference", &want), ("f64 reference", &want64)] {
            same(&format!("indices vs {tag}"), &got.1, &w.1)?;
            close(&format!("scores vs {tag}"), &got.0, &w.0, tol)?;
            close(&format!("gates vs {tag}"), &got.2, &w.2, tol)?;
        }
        Ok(())
    });
}

type Dispatched = (Vec<f64>, Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);

fn dispatch_run<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    n: usize,
    idx: &[u32],
    gates: &[f64],
) -> R<Dispatched> {
    let (e, k) = (cfg.experts, cfg.k);
    let ib = c.idx_upload(idx)?;
    let mut gb = up(c, gates)?;
    let mut dropped = c.idx_upload(&vec![7; n * k])?;
    let mut counts = c.idx_zeros(e)?;
    let mut order = c.idx_zeros(n * k)?;
    let mut offsets = c.idx_zeros(e + 1)?;
    c.dispatch(
        cfg,
        n,
        &ib,
        &mut gb,
        &mut dropped,
        &mut counts,
        &mut order,
        &mut offsets,
    )?;
    let offsets = down_idx(c, &offsets)?;
    let mut order = down_idx(c, &order)?;
    order.truncate(offsets[e] as usize);
    Ok((
        down(c, &gb)?,
        down_idx(c, &dropped)?,
        down_idx(c, &counts)?,
        offsets,
        order,
    ))
}

/// `dispatch`: capacity dropping under both policies (gates on a coarse grid, so exact ties
/// occur and must go to the lower token index) and the dispatch plan.
pub fn dispatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::dispatch";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        gen::shape(gen::Limits { n: 8, d: 1, e: 6 }),
        prop::option::of((
            select(vec![0.25, 0.5, 0.75, 1.0, 1.5]),
            prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
        )),
        any::<u64>(),
    );
    run_prop(NAME, CASES, strategy, |((n, _, e, k), cap, seed)| {
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
        let (got, want, want64) = three!(&b, dispatch_run(&cfg, n, &idx, &gates));
        for (tag, w) in [("reference", &want), ("f64 reference", &want64)] {
            same(&format!("dropped vs {tag}"), &got.1, &w.1)?;
            same(&format!("counts vs {tag}"), &got.2, &w.2)?;
            same(&format!("offsets vs {tag}"), &got.3, &w.3)?;
            same(&format!("order vs {tag}"), &got.4, &w.4)?;
            same(&format!("gates vs {tag}"), &got.0, &w.0)?;
        }
        Ok(())
    });
}

/// Inputs of the backward row kernel.
#[derive(Debug, Clone)]
struct BwdIn {
    n: usize,
    z: Vec<f64>,
    p: Vec<f64>,
    idx: Vec<u32>,
    gates: Vec<f64>,
    dropped: Vec<u32>,
    dw: Vec<f64>,
    lbl: Option<(Vec<f64>, usize)>,
    z_coef: f64,
}

fn bwd_run<C: Backend>(c: &C, cfg: &RouterConfig, x: &BwdIn) -> R<Vec<f64>> {
    let (e, n) = (cfg.experts, x.n);
    let z = up(c, &x.z)?;
    let p = up(c, &x.p)?;
    let idx = c.idx_upload(&x.idx)?;
    let gates = up(c, &x.gates)?;
    let dropped = c.idx_upload(&x.dropped)?;
    let dw = up(c, &x.dw)?;
    let coef = match &x.lbl {
        Some((v, _)) => Some(up(c, v)?),
        None => None,
    };
    let lbl = match (&coef, &x.lbl) {
        (Some(cb), Some((_, group_len))) => Some(LblCoef {
            coef: cb,
            group_len: *group_len,
        }),
        _ => None,
    };
    let mut dz = c.zeros(n * e)?;
    c.router_backward_rows(
        cfg,
        n,
        &z,
        &p,
        &idx,
        &gates,
        &dropped,
        &dw,
        lbl,
        C::Elem::of(x.z_coef),
        &mut dz,
    )?;
    down(c, &dz)
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
        simbal_core::ops::select::select_row(cfg, pr, None, &mut idx[t * k..(t + 1) * k]);
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
    let lbl = with_lbl.then(|| {
        let divs = gen::divisors(n);
        let group_len = divs[rng.below(divs.len())];
        (
            rounded::<T>(&gen::normal(&mut rng, (n / group_len) * e, 0.1)),
            group_len,
        )
    });
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
        z_coef,
    }
}

/// `router_backward_rows`: gate gradient with and without renormalisation, both score
/// functions, dropped slots, per-sequence LBL coefficients and the z-loss term.
pub fn router_backward_rows<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::router_backward_rows";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (routing_input(), any::<bool>(), any::<bool>(), any::<bool>());
    run_prop(
        NAME,
        CASES,
        strategy,
        |((n, cfg, seed, _), with_lbl, with_z, with_drop)| {
            let input = bwd_input::<B::Elem>(n, &cfg, seed, with_lbl, with_z, with_drop);
            let (got, want, want64) = three!(&b, bwd_run(&cfg, &input));
            close("dZ vs reference", &got, &want, tol)?;
            close("dZ vs f64 reference", &got, &want64, tol)
        },
    );
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

fn bwd_sums_run<C: Backend>(c: &C, cfg: &RouterConfig, x: &BwdIn, lse: bool, max: bool) -> R<Sums> {
    let (e, n) = (cfg.experts, x.n);
    let coef = match &x.lbl {
        Some((v, _)) => Some(up(c, v)?),
        None => None,
    };
    let lbl = match (&coef, &x.lbl) {
        (Some(cb), Some((_, group_len))) => Some(LblCoef {
            coef: cb,
            group_len: *group_len,
        }),
        _ => None,
    };
    let mut dz = c.zeros(n * e)?;
    let sums = c.router_backward_rows_and_sums(
        cfg,
        n,
        &up(c, &x.z)?,
        &up(c, &x.p)?,
        &c.idx_upload(&x.idx)?,
        &up(c, &x.gates)?,
        &c.idx_upload(&x.dropped)?,
        &up(c, &x.dw)?,
        lbl,
        C::Elem::of(x.z_coef),
        &mut dz,
        lse,
        max,
    )?;
    let f = |v: Option<C::Elem>| v.map(|v| v.to_f64_lossy());
    Ok((down(c, &dz)?, f(sums.lse_sq_sum), f(sums.max_abs_dz)))
}

/// `router_backward_rows_and_sums`: `dz` as the reference's backward rows, `sum lse^2` as its
/// `lse_sq_sum`, `max |dz|` exactly the largest `|dz|` returned, each only when asked.
pub fn router_backward_rows_and_sums<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::router_backward_rows_and_sums";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = fused_shape().prop_flat_map(|(n, _, e, k)| {
        (
            Just(n),
            gen::router_config(e, k),
            any::<u64>(),
            any::<[bool; 5]>(),
        )
    });
    run_prop(NAME, CASES, strategy, |(n, cfg, seed, flags)| {
        let [with_lbl, with_z, with_drop, lse, max] = flags;
        let input = bwd_input::<B::Elem>(n, &cfg, seed, with_lbl, with_z, with_drop);
        let got = bwd_sums_run(&b, &cfg, &input, lse, max).ctx("backend")?;
        let want =
            bwd_sums_run(&Reference::<f64>::new(), &cfg, &input, lse, max).ctx("f64 reference")?;
        close("dZ vs f64 reference", &got.0, &want.0, tol)?;
        match (lse, got.1, want.1) {
            (true, Some(g), Some(w)) => close1("sum lse^2 vs f64 reference", g, w, tol)?,
            (false, None, _) => {}
            (_, g, _) => return Err(fail(format!("sum lse^2 asked {lse}, got {g:?}"))),
        }
        let largest = got.0.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        match (max, got.2) {
            (true, Some(g)) => ensure(g == largest, || {
                format!("max |dz| {g}, but the largest |dz| returned is {largest}")
            }),
            (false, None) => Ok(()),
            (_, g) => Err(fail(format!("max |dz| asked {max}, got {g:?}"))),
        }
    });
}

type Fused = (Vec<f64>, Vec<f64>, Vec<u32>, Vec<f64>, Option<f64>);

fn fused_forward_run<C: Backend>(
    c: &C,
    cfg: &RouterConfig,
    (n, d): (usize, usize),
    x: &[f64],
    r: &[f64],
    bias: Option<&[f64]>,
    max: bool,
) -> R<Fused> {
    let (e, k) = (cfg.experts, cfg.k);
    let g = match cfg.layout {
        WeightLayout::DxE => Gemm::new(n, e, d),
        WeightLayout::ExD => Gemm::new(n, e, d).tb(),
    };
    let bb = match bias {
        Some(v) => Some(up(c, v)?),
        None => None,
    };
    let mut z = c.zeros(n * e)?;
    let mut p = c.zeros(n * e)?;
    let mut idx = c.idx_zeros(n * k)?;
    let mut gates = c.zeros(n * k)?;
    let m = c.logits_and_route_rows(
        cfg,
        &g,
        &up(c, x)?,
        &up(c, r)?,
        bb.as_ref(),
        &mut z,
        &mut p,
        &mut idx,
        &mut gates,
        max,
    )?;
    Ok((
        down(c, &z)?,
        down(c, &p)?,
        down_idx(c, &idx)?,
        down(c, &gates)?,
        m.map(|v| v.to_f64_lossy()),
    ))
}

/// `logits_and_route_rows`: logits as the reference GEMM gives them, and those logits routed
/// exactly as the reference routes them (indices exactly, scores and gates to tolerance), in
/// both weight layouts, with and without a bias; `max |Z|` exactly the largest `|Z|` returned.
pub fn logits_and_route_rows<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::logits_and_route_rows";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = fused_shape().prop_flat_map(|(n, d, e, k)| {
        (
            Just((n, d)),
            gen::router_config(e, k),
            any::<bool>(),
            any::<[bool; 2]>(),
            any::<u64>(),
        )
    });
    run_prop(
        NAME,
        CASES,
        strategy,
        |((n, d), cfg, exd, [with_bias, max], seed)| {
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
            let got = fused_forward_run(&b, &cfg, (n, d), &x, &r, bias, max).ctx("backend")?;
            let want = fused_forward_run(&Reference::<f64>::new(), &cfg, (n, d), &x, &r, bias, max)
                .ctx("f64 reference")?;
            close("logits vs f64 reference", &got.0, &want.0, tol)?;
            // Route the backend's own logits on the reference: the same selection, exactly.
            let z = rounded::<B::Elem>(&got.0);
            let (wp, widx, wg) = route_run(&Reference::<B::Elem>::new(), &cfg, n, &z, bias)
                .ctx("reference routing")?;
            let cfg_nocap = RouterConfig {
                capacity: None,
                ..cfg
            };
            let m = crate::run::routing_margin(&cfg_nocap, n, &wp, bias, &widx);
            if m < tol {
                return Err(reject("near a selection tie"));
            }
            same("indices vs the reference routing", &got.2, &widx)?;
            close("scores vs the reference routing", &got.1, &wp, tol)?;
            close("gates vs the reference routing", &got.3, &wg, tol)?;
            let largest = got.0.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            match (max, got.4) {
                (true, Some(g)) => ensure(g == largest, || {
                    format!("max |Z| {g}, but the largest |Z| returned is {largest}")
                }),
                (false, None) => Ok(()),
                (_, g) => Err(fail(format!("max |Z| asked {max}, got {g:?}"))),
            }
        },
    );
}

fn gcs_run<C: Backend>(c: &C, n: usize, cols: usize, gl: usize, a: &[f64]) -> R<Vec<f64>> {
    let ab = up(c, a)?;
    let mut out = c.zeros((n / gl) * cols)?;
    c.group_column_sums(n, cols, gl, &ab, &mut out)?;
    down(c, &out)
}

fn gc_run<C: Backend>(
    c: &C,
    (n, k, e, gl): (usize, usize, usize, usize),
    idx: &[u32],
    dropped: &[u32],
) -> R<Vec<u32>> {
    let ib = c.idx_upload(idx)?;
    let db = c.idx_upload(dropped)?;
    let mut out = c.idx_upload(&vec![9; (n / gl) * e])?;
    c.group_counts(n, k, e, gl, &ib, &db, &mut out)?;
    down_idx(c, &out)
}

/// `group_column_sums` and `group_counts` over every divisor of `N` as the group length.
pub fn group_reductions<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::group_reductions";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = gen::shape(gen::Limits { n: 12, d: 1, e: 7 })
        .prop_flat_map(|s| (Just(s), select(gen::divisors(s.0)), any::<u64>()));
    run_prop(NAME, CASES, strategy, |((n, _, e, k), gl, seed)| {
        let mut rng = Rng::new(seed);
        let a = rounded::<B::Elem>(&gen::normal(&mut rng, n * e, 1.0));
        let (got, want, want64) = three!(&b, gcs_run(n, e, gl, &a));
        close("group_column_sums vs reference", &got, &want, tol)?;
        close("group_column_sums vs f64 reference", &got, &want64, tol)?;
        let idx: Vec<u32> = (0..n * k).map(|_| rng.below(e) as u32).collect();
        let dropped: Vec<u32> = (0..n * k).map(|_| u32::from(rng.below(4) == 0)).collect();
        let (got, want, want64) = three!(&b, gc_run((n, k, e, gl), &idx, &dropped));
        same("group_counts vs reference", &got, &want)?;
        same("group_counts vs f64 reference", &got, &want64)
    });
}

fn lbl_run<C: Backend>(
    c: &C,
    cfg: &LblConfig,
    e: usize,
    s: &LblScales,
    counts: &[u32],
    sums: &[f64],
) -> R<(f64, Vec<f64>)> {
    let cb = c.idx_upload(counts)?;
    let sb = up(c, sums)?;
    let mut coef = up(c, &vec![f64::NAN; counts.len()])?;
    let value = c.lbl_coefficients(cfg, e, s, &cb, &sb, &mut coef)?;
    Ok((value.to_f64_lossy(), down(c, &coef)?))
}

/// `lbl_coefficients`: random kept counts (`0..=k T_f` per group and expert) and score sums
/// (`[0, T_p)`) of 1 to 4 groups, both normalisations; the count and score token numbers equal
/// (micro-batch, sequence) or not (global-batch style).
pub fn lbl_coefficients<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::lbl_coefficients";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        (1..=4usize, 1..=8usize, 1..=8usize),
        1..=12usize,
        prop::option::of(1..=64usize),
        prop_oneof![
            Just(LblNormalization::Switch),
            Just(LblNormalization::HuggingFace)
        ],
        select(vec![0.01, 0.5, 1.0]),
        any::<u64>(),
    );
    run_prop(
        NAME,
        CASES,
        strategy,
        |((groups, e, k), tokens, count_tokens, normalization, alpha, seed)| {
            let k = k.min(e);
            let tf = count_tokens.unwrap_or(tokens);
            let s = LblScales {
                k,
                count_tokens: tf as f64,
                score_tokens: tokens as f64,
                groups,
            };
            let cfg = LblConfig {
                alpha,
                level: LblLevel::MicroBatch,
                normalization,
            };
            let mut rng = Rng::new(seed);
            let counts: Vec<u32> = (0..groups * e)
                .map(|_| rng.below(k * tf + 1) as u32)
                .collect();
            let sums: Vec<f64> = (0..groups * e)
                .map(|_| rng.uniform() * tokens as f64)
                .collect();
            let sums = rounded::<B::Elem>(&sums);
            let (got, want, want64) = three!(&b, lbl_run(&cfg, e, &s, &counts, &sums));
            for (tag, w) in [("reference", &want), ("f64 reference", &want64)] {
                close1(&format!("LBL value vs {tag}"), got.0, w.0, tol)?;
                close(&format!("LBL coefficients vs {tag}"), &got.1, &w.1, tol)?;
            }
            Ok(())
        },
    );
}

fn lse_run<C: Backend>(c: &C, n: usize, e: usize, z: &[f64]) -> R<f64> {
    Ok(c.lse_sq_sum(n, e, &up(c, z)?)?.to_f64_lossy())
}

fn lse_scored_run<C: Backend>(
    c: &C,
    score: ScoreFn,
    n: usize,
    e: usize,
    z: &[f64],
    p: &[f64],
) -> R<f64> {
    Ok(c.lse_sq_sum_scored(score, n, e, &up(c, z)?, &up(c, p)?)?
        .to_f64_lossy())
}

/// `lse_sq_sum`, logits of moderate and large magnitude; and `lse_sq_sum_scored` given the
/// scores of either score function (as `route_rows` writes them, rounded to the element type),
/// against the reference's `lse_sq_sum`.
pub fn lse_sq_sum<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::lse_sq_sum";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        1..=8usize,
        1..=8usize,
        select(vec![1.0, 10.0, 1e3]),
        any::<u64>(),
    );
    run_prop(NAME, CASES, strategy, |(n, e, std, seed)| {
        let z = rounded::<B::Elem>(&gen::normal(&mut Rng::new(seed), n * e, std));
        let (got, want, want64) = three!(&b, lse_run(n, e, &z));
        close1("lse_sq_sum vs reference", got, want, tol)?;
        close1("lse_sq_sum vs f64 reference", got, want64, tol)?;
        for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
            let mut p = vec![0.0; n * e];
            for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
                score_row(score, zr, pr);
            }
            let p = rounded::<B::Elem>(&p);
            let got = lse_scored_run(&b, score, n, e, &z, &p).ctx("lse_sq_sum_scored (backend)")?;
            close1(
                &format!("lse_sq_sum_scored ({score:?}) vs reference"),
                got,
                want,
                tol,
            )?;
            close1(
                &format!("lse_sq_sum_scored ({score:?}) vs f64 reference"),
                got,
                want64,
                tol,
            )?;
        }
        Ok(())
    });
}

fn residual_run<C: Backend>(c: &C, cfg: &SimBalConfig, e: usize, g: &[f64]) -> R<(f64, Vec<f64>)> {
    let mut gb = up(c, g)?;
    let loss = c.simbal_residual(cfg, e, &mut gb)?.to_f64_lossy();
    Ok((loss, down(c, &gb)?))
}

/// `simbal_residual` for every norm on a symmetric Gram matrix.
pub fn simbal_residual<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::simbal_residual";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (1..=8usize, gen::simbal_config(), any::<u64>());
    run_prop(NAME, CASES, strategy, |(e, cfg, seed)| {
        let mut rng = Rng::new(seed);
        let mut g = vec![0.0; e * e];
        for a in 0..e {
            for c in a..e {
                let v = if a == c {
                    1.0 + 0.3 * rng.normal()
                } else {
                    0.3 * rng.normal()
                };
                g[a * e + c] = v;
                g[c * e + a] = v;
            }
        }
        let g = rounded::<B::Elem>(&g);
        if g.iter().enumerate().any(|(ab, v)| {
            let r = if ab / e == ab % e { v - 1.0 } else { *v };
            r.abs() < 1e-6
        }) {
            return Err(reject("residual near 0"));
        }
        let (got, want, want64) = three!(&b, residual_run(&cfg, e, &g));
        close1("simbal_residual loss vs reference", got.0, want.0, tol)?;
        close1(
            "simbal_residual loss vs f64 reference",
            got.0,
            want64.0,
            tol,
        )?;
        close(
            "simbal_residual multiplier vs reference",
            &got.1,
            &want.1,
            tol,
        )?;
        close(
            "simbal_residual multiplier vs f64 reference",
            &got.1,
            &want64.1,
            tol,
        )
    });
}

fn norm_run<C: Backend>(
    c: &C,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
) -> R<(Vec<f64>, Vec<f64>)> {
    let rb = up(c, r)?;
    let mut norms = c.zeros(e)?;
    let mut rn = c.zeros(d * e)?;
    c.normalize_columns(layout, d, e, &rb, &mut norms, &mut rn)?;
    Ok((down(c, &norms)?, down(c, &rn)?))
}

fn project_run<C: Backend>(
    c: &C,
    layout: WeightLayout,
    (d, e): (usize, usize),
    rn: &[f64],
    norms: &[f64],
    g: &[f64],
    grad: &[f64],
) -> R<Vec<f64>> {
    let (rb, nb, gb) = (up(c, rn)?, up(c, norms)?, up(c, g)?);
    let mut out = up(c, grad)?;
    c.scale_free_project(layout, d, e, &rb, &nb, &gb, &mut out)?;
    down(c, &out)
}

/// `normalize_columns` (a zero column included sometimes) and `scale_free_project` (accumulating
/// into a non-zero gradient), both layouts.
pub fn column_normalisation<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::column_normalisation";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        gen::weight_shape(),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        any::<bool>(),
    );
    run_prop(NAME, CASES, strategy, |((d, e, seed), layout, zero_col)| {
        let mut rng = Rng::new(seed);
        let mut r = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        if zero_col {
            let (rs, cs) = simbal_core::ops::simbal::strides(layout, d, e);
            let c = rng.below(e);
            for i in 0..d {
                r[i * rs + c * cs] = 0.0;
            }
        }
        let (got, want, want64) = three!(&b, norm_run(layout, d, e, &r));
        for (tag, w) in [("reference", &want), ("f64 reference", &want64)] {
            close(&format!("column norms vs {tag}"), &got.0, &w.0, tol)?;
            close(&format!("normalised columns vs {tag}"), &got.1, &w.1, tol)?;
        }
        // Project a gradient through the reference's normalisation.
        let (norms, rn) = (rounded::<B::Elem>(&want64.0), rounded::<B::Elem>(&want64.1));
        let g = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let grad = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let (got, want, want64) = three!(&b, project_run(layout, (d, e), &rn, &norms, &g, &grad));
        close("scale_free_project vs reference", &got, &want, tol)?;
        close("scale_free_project vs f64 reference", &got, &want64, tol)
    });
}

fn entropy_run<C: Backend>(c: &C, n: usize, e: usize, p: &[f64]) -> R<f64> {
    Ok(c.routing_entropy(n, e, &up(c, p)?)?.to_f64_lossy())
}

/// `routing_entropy` on softmax and sigmoid scores.
pub fn routing_entropy<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::routing_entropy";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (1..=8usize, 1..=8usize, any::<bool>(), any::<u64>());
    run_prop(NAME, CASES, strategy, |(n, e, softmax, seed)| {
        let z = gen::normal(&mut Rng::new(seed), n * e, 2.0);
        let mut p = vec![0.0; n * e];
        let score = if softmax {
            simbal_core::ScoreFn::Softmax
        } else {
            simbal_core::ScoreFn::Sigmoid
        };
        for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
            score_row(score, zr, pr);
        }
        let p = rounded::<B::Elem>(&p);
        let (got, want, want64) = three!(&b, entropy_run(n, e, &p));
        close1("routing_entropy vs reference", got, want, tol)?;
        close1("routing_entropy vs f64 reference", got, want64, tol)
    });
}

fn finite_run<C: Backend>(c: &C, cols: usize, v: &[f64]) -> R<Result<(), SimbalError>> {
    Ok(c.check_finite("probe", cols, &up(c, v)?))
}

fn max_abs_run<C: Backend>(c: &C, v: &[f64]) -> R<f64> {
    Ok(c.max_abs(&up(c, v)?)?.to_f64_lossy())
}

/// `check_finite`: `Ok` on finite data, else `NonFinite` at the same first position; and
/// `max_abs` on the same data: exactly the reference's value, NaN when any element is NaN.
pub fn check_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::check_finite";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        1..=6usize,
        1..=6usize,
        prop::option::of((
            any::<prop::sample::Index>(),
            select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
        )),
        any::<prop::sample::Index>(),
        any::<u64>(),
    );
    run_prop(NAME, CASES, strategy, |(rows, cols, bad, bad2, seed)| {
        let mut v = gen::normal(&mut Rng::new(seed), rows * cols, 1.0);
        let mut first = None;
        if let Some((at, val)) = bad {
            let (a, b2) = (at.index(v.len()), bad2.index(v.len()));
            v[a] = val;
            v[b2] = f64::NAN;
            first = Some(a.min(b2));
        }
        let (got_max, want_max, _) = three!(&b, max_abs_run(&v));
        ensure(
            got_max == want_max || (got_max.is_nan() && want_max.is_nan()),
            || format!("max_abs: backend {got_max}, reference {want_max} on {v:?}"),
        )?;
        let (got, want, _) = three!(&b, finite_run(cols, &v));
        ensure(got == want, || {
            format!("check_finite: backend {got:?}, reference {want:?}")
        })?;
        match (first, got) {
            (None, Ok(())) => Ok(()),
            (
                Some(at),
                Err(SimbalError::NonFinite {
                    what: "probe",
                    row,
                    col,
                }),
            ) => ensure((row, col) == (at / cols, at % cols), || {
                format!("check_finite reported ({row}, {col}), first non-finite at {at}")
            }),
            (first, got) => Err(fail(format!(
                "check_finite: first bad at {first:?}, got {got:?}"
            ))),
        }
    });
}

/// Kernels whose configuration is wrong must refuse: out-of-range expert indices are a
/// `Backend` error in `dispatch` and `router_backward_rows`.
pub fn refuse_bad_indices<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "kernels::refuse_bad_indices";
    let Some(b) = acquire(make, NAME) else { return };
    let cfg = RouterConfig::new(3, 1);
    let idx = [0u32, 3];
    let gates = [0.5, 0.5];
    match dispatch_run(&b, &cfg, 2, &idx, &gates) {
        Err(SimbalError::Backend { .. }) => {}
        other => panic!("{NAME}: dispatch with index 3 of 3 experts gave {other:?}"),
    }
    let x = BwdIn {
        n: 2,
        z: vec![0.0; 6],
        p: vec![1.0 / 3.0; 6],
        idx: idx.to_vec(),
        gates: gates.to_vec(),
        dropped: vec![0; 2],
        dw: vec![1.0; 2],
        lbl: None,
        z_coef: 0.0,
    };
    match bwd_run(&b, &cfg, &x) {
        Err(SimbalError::Backend { .. }) => {}
        other => panic!("{NAME}: router_backward_rows with index 3 of 3 experts gave {other:?}"),
    }
}
