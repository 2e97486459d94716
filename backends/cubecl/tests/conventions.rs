//! The non-default conventions on the device (issue 11) against `Reference<f32>` on the same
//! inputs: per-token group ids with masked tokens, the LBL's per-token normalisation,
//! sqrt-softplus scores, per-group valid tokens.
mod common;
use common::{close_scaled as close, gpu, read_f as f, read_u as u, Rng};
use simbal_core::lbl::kernels::{GroupCounts, GroupSums};
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{
    BackwardRequest, LblCoef, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::tokens::{Groups, MASKED};
use simbal_core::zloss::LseSqSum;
use simbal_core::{Backend, Memory, Reference, RouterConfig, ScoreFn};

/// One set of router tensors: `n` tokens, `E` experts, `k` picks, `count` groups.
struct Case {
    n: usize,
    e: usize,
    k: usize,
    count: usize,
    z: Vec<f32>,
    p: Vec<f32>,
    idx: Vec<u32>,
    gates: Vec<f32>,
    dropped: Vec<u32>,
    dw: Vec<f32>,
    /// Group id per token, some [`MASKED`].
    ids: Vec<u32>,
    coef: Vec<f32>,
}

fn score(s: ScoreFn, z: &[f32], e: usize) -> Vec<f32> {
    let mut p = vec![0.0f32; z.len()];
    for (pr, zr) in p.chunks_mut(e).zip(z.chunks(e)) {
        match s {
            ScoreFn::Softmax => {
                let m = zr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let sum: f32 = zr.iter().map(|v| (v - m).exp()).sum();
                for (q, &v) in pr.iter_mut().zip(zr) {
                    *q = (v - m).exp() / sum;
                }
            }
            ScoreFn::Sigmoid => {
                for (q, &v) in pr.iter_mut().zip(zr) {
                    *q = 1.0 / (1.0 + (-v).exp());
                }
            }
            ScoreFn::SqrtSoftplus => {
                for (q, &v) in pr.iter_mut().zip(zr) {
                    *q = v.exp().ln_1p().sqrt();
                }
            }
        }
    }
    p
}

impl Case {
    fn new(rng: &mut Rng, s: ScoreFn, n: usize, e: usize, k: usize, count: usize) -> Self {
        let z: Vec<f32> = rng.vec(n * e).iter().map(|v| v * 2.0).collect();
        let p = score(s, &z, e);
        let idx = (0..n * k).map(|_| rng.below(e) as u32).collect();
        let gates = (0..n * k).map(|_| rng.unif()).collect();
        let dropped = (0..n * k).map(|_| u32::from(rng.below(5) == 0)).collect();
        let ids = (0..n)
            .map(|_| match rng.below(count + 2) {
                g if g < count => g as u32,
                _ => MASKED,
            })
            .collect();
        Case {
            n,
            e,
            k,
            count,
            z,
            p,
            idx,
            gates,
            dropped,
            dw: rng.vec(n * k),
            ids,
            coef: rng.vec(count * e),
        }
    }
}

/// The case's groups: its ids, or runs of `n / count` tokens.
fn groups<'a, B: Memory>(c: &Case, by_ids: bool, ids: &'a B::IdxView) -> Groups<'a, B> {
    if by_ids {
        Groups::Ids {
            ids,
            count: c.count,
        }
    } else {
        Groups::Runs { len: c.n / c.count }
    }
}

/// `dz`, `sum lse^2` and `max |dz|` of one backward.
fn backward<B: Backend<Elem = f32>>(
    b: &B,
    cfg: &RouterConfig,
    c: &Case,
    by_ids: bool,
    lbl: Option<bool>,
    z_coef: f32,
) -> (Vec<f32>, [f32; 2]) {
    let (z, p, g, w) = (
        b.upload(&c.z).unwrap(),
        b.upload(&c.p).unwrap(),
        b.upload(&c.gates).unwrap(),
        b.upload(&c.dw).unwrap(),
    );
    let (idx, dr, ids) = (
        b.idx_upload(&c.idx).unwrap(),
        b.idx_upload(&c.dropped).unwrap(),
        b.idx_upload(&c.ids).unwrap(),
    );
    let coef = b.upload(&c.coef).unwrap();
    let mut dz = b.zeros(c.n * c.e).unwrap();
    let groups = groups::<B>(c, by_ids, idx_view::<B>(&ids));
    let sums = b
        .router_backward(
            RouterBackward {
                cfg,
                n: c.n,
                z: view::<B>(&z),
                p: view::<B>(&p),
                idx: idx_view::<B>(&idx),
                gates: view::<B>(&g),
                dropped: idx_view::<B>(&dr),
                dw: view::<B>(&w),
                groups,
                lbl: lbl.map(|normalize| LblCoef {
                    coef: view::<B>(&coef),
                    normalize,
                }),
                z_coef,
                dz: view_mut::<B>(&mut dz),
                request: BackwardRequest {
                    lse_sq_sum: true,
                    max_abs_dz: true,
                },
            }
            .check(b)
            .unwrap(),
        )
        .unwrap();
    let out = f(b, view::<B>(&dz));
    let read = |v: Option<B::Value>| b.read_value(&v.unwrap()).unwrap();
    (out, [read(sums.lse_sq_sum), read(sums.max_abs_dz)])
}

#[test]
fn backward_ids_and_normalize_match_reference() {
    let Some(gb) = gpu() else { return };
    let rb = Reference::<f32>::new();
    let mut rng = Rng::new(11);
    let scores = [ScoreFn::Softmax, ScoreFn::Sigmoid];
    for (i, &(e, k, n, count)) in [(8, 2, 48, 3), (64, 6, 40, 4), (5, 1, 9, 3)]
        .iter()
        .enumerate()
    {
        for (si, &s) in scores.iter().enumerate() {
            for renorm in [true, false] {
                let cfg = RouterConfig::new(e, k)
                    .with_score(s)
                    .with_renormalize(renorm)
                    .with_scale(1.5);
                let c = Case::new(&mut rng, s, n, e, k, count);
                for (by_ids, lbl, z_coef) in [
                    (true, Some(false), 0.01),
                    (true, Some(true), 0.0),
                    (true, None, 0.02),
                    (false, Some(true), 0.01),
                    (true, Some(true), 0.03),
                ] {
                    let tag = format!("case {i}/{si}/{renorm}: {by_ids} {lbl:?} {z_coef}");
                    let (gz, gs) = backward(&gb, &cfg, &c, by_ids, lbl, z_coef);
                    let (wz, ws) = backward(&rb, &cfg, &c, by_ids, lbl, z_coef);
                    close(&format!("{tag}: dz"), &gz, &wz, 1e-4);
                    close(&format!("{tag}: sums"), &gs, &ws, 1e-4);
                }
            }
        }
    }
}

/// Group column sums of the scores and group counts (kept, and every assignment).
fn group_sums<B: Backend<Elem = f32>>(
    b: &B,
    c: &Case,
    by_ids: bool,
    normalize: bool,
) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
    let p = b.upload(&c.p).unwrap();
    let (idx, dr, ids) = (
        b.idx_upload(&c.idx).unwrap(),
        b.idx_upload(&c.dropped).unwrap(),
        b.idx_upload(&c.ids).unwrap(),
    );
    let g = groups::<B>(c, by_ids, idx_view::<B>(&ids));
    let mut out = b.upload(&vec![7.0; c.count * c.e]).unwrap();
    let args = GroupSums {
        n: c.n,
        cols: c.e,
        groups: g,
        normalize,
        a: view::<B>(&p),
        out: view_mut::<B>(&mut out),
    };
    b.group_column_sums(args.check(b).unwrap()).unwrap();
    let counts = |dropped| {
        let mut o = b.idx_upload(&vec![9; c.count * c.e]).unwrap();
        let args = GroupCounts {
            n: c.n,
            k: c.k,
            e: c.e,
            groups: g,
            idx: idx_view::<B>(&idx),
            dropped,
            out: idx_view_mut::<B>(&mut o),
        };
        b.group_counts(args.check(b).unwrap()).unwrap();
        u(b, idx_view::<B>(&o))
    };
    let kept = counts(Some(idx_view::<B>(&dr)));
    let all = counts(None);
    (f(b, view::<B>(&out)), kept, all)
}

#[test]
fn group_sums_and_counts_match_reference() {
    let Some(gb) = gpu() else { return };
    let rb = Reference::<f32>::new();
    let mut rng = Rng::new(12);
    // `tiles` span several 256-row tiles of the fused normalisation.
    let tiles = [(40, 2, 1200, 2), (33, 1, 700, 1)];
    let small = [(8, 2, 48, 3), (70, 6, 100, 5), (5, 1, 9, 3), (3, 1, 4, 4)];
    for &(e, k, n, count) in small.iter().chain(&tiles) {
        let c = Case::new(&mut rng, ScoreFn::Sigmoid, n, e, k, count);
        for by_ids in [true, false] {
            for normalize in [true, false] {
                let tag = format!("{e} {k} {n} {count}: {by_ids} {normalize}");
                let (gs, gk, ga) = group_sums(&gb, &c, by_ids, normalize);
                let (ws, wk, wa) = group_sums(&rb, &c, by_ids, normalize);
                close(&format!("{tag}: sums"), &gs, &ws, 1e-5);
                assert_eq!(gk, wk, "{tag}: kept counts");
                assert_eq!(ga, wa, "{tag}: counts");
            }
        }
    }
}

/// `[sum lse^2, mean entropy]` over the case's valid tokens.
fn masked_stats<B: Backend<Elem = f32>>(b: &B, c: &Case, by_ids: bool) -> [f32; 2] {
    let (z, p) = (b.upload(&c.z).unwrap(), b.upload(&c.p).unwrap());
    let ids = b.idx_upload(&c.ids).unwrap();
    let g = groups::<B>(c, by_ids, idx_view::<B>(&ids));
    let lse = LseSqSum {
        n: c.n,
        groups: g,
        e: c.e,
        z: view::<B>(&z),
        scores: None,
    };
    let lse = b
        .read_value(&b.lse_sq_sum(lse.check(b).unwrap()).unwrap())
        .unwrap();
    let h = Entropy {
        n: c.n,
        groups: g,
        e: c.e,
        p: view::<B>(&p),
    };
    [lse, b.routing_entropy(h.check(b).unwrap()).unwrap()]
}

#[test]
fn masked_lse_and_entropy_match_reference() {
    let Some(gb) = gpu() else { return };
    let rb = Reference::<f32>::new();
    let mut rng = Rng::new(13);
    for &(e, n, count) in &[(8, 48, 3), (70, 100, 5), (5, 9, 3), (200, 33, 1)] {
        for s in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
            let mut c = Case::new(&mut rng, s, n, e, 1, count);
            for by_ids in [true, false] {
                let tag = format!("{e} {n} {count} {s:?}: {by_ids}");
                close(
                    &tag,
                    &masked_stats(&gb, &c, by_ids),
                    &masked_stats(&rb, &c, by_ids),
                    1e-4,
                );
            }
            // Every token masked: both are 0.
            c.ids.iter_mut().for_each(|v| *v = MASKED);
            assert_eq!(masked_stats(&gb, &c, true), [0.0, 0.0]);
            assert_eq!(masked_stats(&rb, &c, true), [0.0, 0.0]);
        }
    }
}

/// `[p, gates]` and `[idx, plain]` of one route with a selection bias and the plain top-k.
fn route_plain<B: Backend<Elem = f32>>(
    b: &B,
    cfg: &RouterConfig,
    n: usize,
    z: &[f32],
    bias: &[f32],
) -> ([Vec<f32>; 2], [Vec<u32>; 2]) {
    let (e, k) = (cfg.experts, cfg.k);
    let (mut dz, db) = (b.upload(z).unwrap(), b.upload(bias).unwrap());
    let (mut p, mut g) = (b.zeros(n * e).unwrap(), b.zeros(n * k).unwrap());
    let mut idx = b.idx_upload(&vec![7; n * k]).unwrap();
    let mut plain = b.idx_upload(&vec![7; n * k]).unwrap();
    let args = Route {
        cfg,
        n,
        logits: Logits::Given,
        bias: Some(view::<B>(&db)),
        z: view_mut::<B>(&mut dz),
        p: view_mut::<B>(&mut p),
        idx: idx_view_mut::<B>(&mut idx),
        gates: view_mut::<B>(&mut g),
        plain: Some(idx_view_mut::<B>(&mut plain)),
        request: RouteRequest { max_abs_z: false },
    };
    b.route(args.check(b).unwrap()).unwrap();
    let fl = [f(b, view::<B>(&p)), f(b, view::<B>(&g))];
    (fl, [u(b, idx_view::<B>(&idx)), u(b, idx_view::<B>(&plain))])
}

/// The plain top-k, fused into the forward row launch, with a bias and a group limit (and
/// ties: logits on a coarse grid).
#[test]
fn route_plain_top_k_matches_reference() {
    let Some(gb) = gpu() else { return };
    let rb = Reference::<f32>::new();
    let mut rng = Rng::new(14);
    for &(e, k, n, groups) in &[
        (8, 2, 37, Some((4, 2))),
        (64, 6, 20, Some((8, 3))),
        (5, 2, 9, None),
    ] {
        for s in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
            let mut cfg = RouterConfig::new(e, k).with_score(s).with_scale(1.5);
            if let Some((g, top)) = groups {
                cfg = cfg.with_groups(g, top);
            }
            let z: Vec<f32> = (0..n * e).map(|_| rng.below(5) as f32 * 0.5).collect();
            let bias: Vec<f32> = rng.vec(e).iter().map(|v| v * 0.3).collect();
            let tag = format!("{e} {k} {n} {groups:?} {s:?}");
            let (gf, gi) = route_plain(&gb, &cfg, n, &z, &bias);
            let (wf, wi) = route_plain(&rb, &cfg, n, &z, &bias);
            close(&format!("{tag}: p"), &gf[0], &wf[0], 1e-5);
            close(&format!("{tag}: gates"), &gf[1], &wf[1], 1e-5);
            assert_eq!(gi[0], wi[0], "{tag}: indices");
            assert_eq!(gi[1], wi[1], "{tag}: plain indices");
        }
    }
}
