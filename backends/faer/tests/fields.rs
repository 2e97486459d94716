//! The field conventions on the faer backend against the scalar reference: the plain top-k
//! written in the routing sweep (given logits and fused with the logits GEMM), masked tokens,
//! sequence-major and packed layouts (per-token group ids), the LBL's per-token normalisation
//! and sqrt-softplus scores, through the router and through the kernels directly.

mod common;

use common::{assert_close, assert_close_as, assert_close_scalar, assert_losses, normal};
use common::{backends, elems_test, per_elem_test, route_given};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::router::kernels::{BackwardRequest, LblCoef, RouterBackward};
use simbal_core::router::select::plain_topk_row;
use simbal_core::stats::CollectStats;
use simbal_core::tokens::{Groups, MASKED};
use simbal_core::zloss::LseSqSum;
use simbal_core::{
    orthogonal_init, Backend, Batch, LblConfig, LblLevel, LossConfig, Memory, Reference, Router,
    RouterConfig, RoutingStats, Scalar, ScoreFn, SeqLayout, ZLossConfig,
};
use simbal_faer::FaerElem;

/// `(want, got)`: `body` with `|b, x|` bound to `(reference, x_ref)`, then to `(backend, x_be)`:
/// one kernel call written once for both backends (their types differ).
macro_rules! both {
    (($rf:expr, $x_rf:expr), ($be:expr, $x_be:expr), |$b:ident, $x:ident| $body:expr) => {
        (
            {
                let ($b, $x) = ($rf, $x_rf);
                $body
            },
            {
                let ($b, $x) = ($be, $x_be);
                $body
            },
        )
    };
}

/// Every score function, with and without renormalisation (the `f32` fused backward sweep is
/// softmax with renormalisation; the rest run core's rows).
fn configs(e: usize) -> Vec<RouterConfig> {
    let mut v = common::base_configs(e);
    v.extend([
        RouterConfig::new(e, 4).with_score(ScoreFn::SqrtSoftplus),
        RouterConfig::new(e, 3)
            .with_score(ScoreFn::SqrtSoftplus)
            .with_renormalize(false),
        RouterConfig::new(e, 4).with_groups(4, 2),
    ]);
    v
}

/// A mask with runs of padding (the tail of every 256-token sequence) and scattered holes.
fn mask(n: usize) -> Vec<u32> {
    (0..n)
        .map(|t| u32::from(t % 256 < 200 && t % 13 != 5))
        .collect()
}

/// Per-token group ids over `groups` groups with every fifth token masked.
fn ids(n: usize, groups: usize) -> Vec<u32> {
    (0..n)
        .map(|t| {
            if t % 5 == 2 {
                MASKED
            } else {
                (t % groups) as u32
            }
        })
        .collect()
}

/// Asserts `got` matches `want` to `tol` relative to `want`'s scale.
#[track_caller]
fn assert_rel<T: Scalar>(what: &str, got: &[T], want: &[T], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let s = want
        .iter()
        .map(|v| v.to_f64_lossy().abs())
        .fold(f64::MIN_POSITIVE, f64::max);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64_lossy(), w.to_f64_lossy());
        assert!(
            (g - w).abs() <= tol * s,
            "{what}: {i}: {g} vs {w} (scale {s})"
        );
    }
}

/// The tolerance of the direct kernel comparisons.
fn tol<T: Scalar>() -> f64 {
    if T::NAME == "f32" {
        1e-4
    } else {
        1e-10
    }
}

fn plain_topk<T: FaerElem>() {
    let n = 1500;
    let mut cfgs = configs(16);
    cfgs.push(RouterConfig::new(100, 70));
    for cfg in cfgs {
        let (e, k) = (cfg.experts, cfg.k);
        let z = &normal::<T>(21, n * e, 2.0)[..];
        let bias = normal::<T>(22, e, 0.1);
        for bias in [None, Some(&bias[..])] {
            let mut want_plain = vec![0u32; n * k];
            let rf = Reference::<T>::new();
            let want = route_given(&rf, &cfg, n, z, bias, Some(&mut want_plain)).unwrap();
            for be in backends::<T>() {
                let what = format!("{cfg:?} bias {} {:?}", bias.is_some(), be.par());
                let mut plain = vec![u32::MAX; n * k];
                let got = route_given(&be, &cfg, n, z, bias, Some(&mut plain)).unwrap();
                // The plain top-k of the backend's own scores, exactly.
                let mut own = vec![0u32; n * k];
                for (pr, ir) in got.0.chunks(e).zip(own.chunks_mut(k)) {
                    plain_topk_row(pr, ir);
                }
                assert_eq!(plain, own, "{what}: plain top-k of its scores");
                // Without the plain top-k the selection is the same.
                let alone = route_given(&be, &cfg, n, z, bias, None).unwrap();
                assert_eq!(alone.1, got.1, "{what}: indices without plain");
                assert_close(&format!("{what}: scores"), &got.0, &want.0);
                // f32 scores differ from the reference's by ulps (vectorised `exp`): with 70
                // of 100 experts picked, some pick lands on a near-tie.
                if T::NAME == "f32" && k > 8 {
                    continue;
                }
                assert_eq!(got.1, want.1, "{what}: indices");
                assert_eq!(plain, want_plain, "{what}: plain top-k");
                assert_close(&format!("{what}: gates"), &got.2, &want.2);
            }
        }
    }
}

elems_test!(plain_topk_matches_reference: plain_topk(f32, f64));

/// The fused logits GEMM and routing writes the plain top-k of each block too.
fn fused_plain<T: FaerElem>() {
    let (n, d, e, k) = (2048, 32, 16, 4);
    let x = normal::<T>(31, n * d, 1.0);
    let bias = normal::<T>(32, e, 0.05);
    for cfg in [
        RouterConfig::new(e, k),
        RouterConfig::new(e, k).with_score(ScoreFn::SqrtSoftplus),
        RouterConfig::new(e, k).with_groups(4, 2),
    ] {
        let r: Vec<T> = orthogonal_init(cfg.layout, d, e, 5).unwrap();
        let mut rf = Router::new(Reference::<T>::new(), cfg).unwrap();
        let rp = rf.forward(&x, &r, Some(&bias)).unwrap();
        for be in backends::<T>() {
            let mut fa = Router::new(be, cfg).unwrap();
            let fp = fa.forward(&x, &r, Some(&bias)).unwrap();
            let what = format!("{cfg:?} {:?}", be.par());
            assert_eq!(fp.indices(), rp.indices(), "{what}: indices");
            assert_eq!(fp.plain_indices(), rp.plain_indices(), "{what}: plain");
            assert_close(&format!("{what}: scores"), fp.scores(), rp.scores());
        }
    }
}

elems_test!(fused_forward_writes_the_plain_topk: fused_plain(f32, f64));

/// The loss configurations of the masked passes: every level and layout, with the z-loss.
fn losses() -> Vec<(LossConfig, bool)> {
    let lbl = |level| LblConfig {
        level,
        ..LblConfig::default()
    };
    let z = ZLossConfig { beta: 0.01 };
    vec![
        (LossConfig::none().with_z_loss(z), false),
        (LossConfig::switch(), false),
        (
            LossConfig::none().with_lbl(lbl(LblLevel::sequences(256))),
            false,
        ),
        (
            LossConfig::none()
                .with_lbl(lbl(LblLevel::Sequence(SeqLayout::SequenceMajor {
                    batch: 8,
                })))
                .with_z_loss(z),
            false,
        ),
        (
            LossConfig::none()
                .with_lbl(lbl(LblLevel::Sequence(SeqLayout::Packed)))
                .with_z_loss(z),
            true,
        ),
        (
            LossConfig::none().with_lbl(lbl(LblLevel::GlobalBatch)),
            false,
        ),
    ]
}

/// A batch with a bias and the optional mask and offsets.
fn batch<'a, T, M: Memory<View = [T], IdxView = [u32]>>(
    bias: &'a [T],
    mask: Option<&'a [u32]>,
    offsets: Option<&'a [u32]>,
) -> Batch<'a, M> {
    Batch {
        bias: Some(bias),
        mask,
        offsets,
    }
}

fn masked_router<T: FaerElem>() {
    let (n, e) = (2048, 16);
    let z = normal::<T>(41, n * e, 2.0);
    let bias = normal::<T>(42, e, 0.05);
    let offsets: Vec<u32> = vec![0, 100, 356, 1000, 1001, 2048];
    for (ci, cfg) in configs(e).into_iter().enumerate() {
        let dw = normal::<T>(43 + ci as u64, n * cfg.k, 1.0);
        for masked in [false, true] {
            let mask = mask(n);
            for (li, (losses, packed)) in losses().into_iter().enumerate() {
                let (mask, offsets) = (masked.then_some(&mask[..]), packed.then_some(&offsets[..]));
                let what = format!("config {ci} masked {masked} losses {li}");
                let mut rf = Router::new(Reference::<T>::new(), cfg).unwrap();
                let mut rp = rf
                    .forward_logits_batch(&z, batch(&bias, mask, offsets))
                    .unwrap();
                let sr = rp.stats().unwrap();
                let er = rp.routing_entropy().unwrap();
                let mut global = sr.clone();
                global.merge(&sr).unwrap();
                let (want_idx, want_plain) = (rp.indices().to_vec(), rp.plain_indices().to_vec());
                let gr = rp.backward(&dw, &losses, Some(&global)).unwrap();
                for be in backends::<T>() {
                    let what = format!("{what} {:?}", be.par());
                    let mut fa = Router::new(be, cfg).unwrap();
                    let mut fp = fa
                        .forward_logits_batch(&z, batch(&bias, mask, offsets))
                        .unwrap();
                    assert_eq!(fp.indices(), &want_idx[..], "{what}: indices");
                    assert_eq!(fp.plain_indices(), &want_plain[..], "{what}: plain");
                    let sf = fp.stats().unwrap();
                    assert_eq!(
                        (&sf.counts, &sf.routed_counts, sf.tokens, sf.dropped),
                        (&sr.counts, &sr.routed_counts, sr.tokens, sr.dropped),
                        "{what}: stats"
                    );
                    let sums = format!("{what}: score sums");
                    assert_close_as::<T>(&sums, &sf.score_sums, &sr.score_sums);
                    let ef = fp.routing_entropy().unwrap();
                    assert_close_scalar(&format!("{what}: entropy"), ef, er, 1e-30);
                    let gf = fp.backward(&dw, &losses, Some(&global)).unwrap();
                    assert_close(&format!("{what}: dz"), gf.dz, gr.dz);
                    assert_losses(&what, &gf.losses, &gr.losses);
                }
            }
        }
    }
}

per_elem_test!(masked_router: masked_router_f64 = f64, masked_router_f32 = f32);

/// `router_backward` called directly with per-token ids (masked tokens), the LBL's per-token
/// normalisation and every score function equals the reference backend's staged rows.
fn backward_direct<T: FaerElem>() {
    let (n, e, groups) = (1024, 16, 4);
    let z = normal::<T>(51, n * e, 2.0);
    let coef = normal::<T>(52, groups * e, 0.1);
    let ids = ids(n, groups);
    for (ci, cfg) in configs(e).into_iter().enumerate() {
        let k = cfg.k;
        let (p, idx, gates) = route_given(&Reference::<T>::new(), &cfg, n, &z, None, None).unwrap();
        let dw = normal::<T>(53 + ci as u64, n * k, 1.0);
        let dropped: Vec<u32> = (0..n * k).map(|a| u32::from(a % 11 == 3)).collect();
        let rows = Rows {
            cfg: &cfg,
            z: &z,
            p,
            idx,
            gates,
            dropped,
            dw,
            coef: &coef,
        };
        for with_ids in [false, true] {
            for normalize in [false, true] {
                let want = backward_of(
                    &Reference::<T>::new(),
                    &rows,
                    g_ref(with_ids, &ids, groups, n),
                    normalize,
                );
                for be in backends::<T>() {
                    let what = format!(
                        "config {ci} ids {with_ids} normalize {normalize} {:?}",
                        be.par()
                    );
                    let got = backward_of(&be, &rows, g_ref(with_ids, &ids, groups, n), normalize);
                    assert_rel(&format!("{what}: dz"), &got.0, &want.0, tol::<T>());
                    assert_rel(&format!("{what}: lse^2"), &[got.1], &[want.1], tol::<T>());
                    assert_eq!(got.2.is_nan(), want.2.is_nan(), "{what}: max |dz|");
                }
            }
        }
    }
}

/// What one `router_backward` call of [`backward_of`] reads besides the groups: the routed
/// rows, `dW` and the LBL coefficients.
struct Rows<'a, T> {
    cfg: &'a RouterConfig,
    z: &'a [T],
    p: Vec<T>,
    idx: Vec<u32>,
    gates: Vec<T>,
    dropped: Vec<u32>,
    dw: Vec<T>,
    coef: &'a [T],
}

/// `dz`, `sum lse^2` and `max |dz|` of one `router_backward` call.
fn backward_of<T: Scalar, B: Backend<Elem = T, View = [T], IdxView = [u32], Value = T>>(
    be: &B,
    r: &Rows<'_, T>,
    groups: Groups<'_, B>,
    normalize: bool,
) -> (Vec<T>, T, T) {
    let n = r.z.len() / r.cfg.experts;
    let mut dz = vec![T::nan(); r.z.len()];
    let sums = be
        .router_backward(
            RouterBackward {
                cfg: r.cfg,
                n,
                z: r.z,
                p: &r.p[..],
                idx: &r.idx[..],
                gates: &r.gates[..],
                dropped: &r.dropped[..],
                dw: &r.dw[..],
                groups,
                lbl: Some(LblCoef {
                    coef: r.coef,
                    normalize,
                }),
                z_coef: T::of(0.01),
                dz: &mut dz[..],
                request: BackwardRequest {
                    lse_sq_sum: true,
                    max_abs_dz: true,
                },
            }
            .check(be)
            .unwrap(),
        )
        .unwrap();
    (dz, sums.lse_sq_sum.unwrap(), sums.max_abs_dz.unwrap())
}

elems_test!(backward_kernel_matches_reference_rows: backward_direct(f64, f32));

/// Group sums (normalised or not), `sum lse^2` and the statistics with per-token ids or runs.
fn reductions<T: FaerElem>() {
    let (n, e, k, groups) = (4096, 8, 2, 8);
    let z = normal::<T>(61, n * e, 2.0);
    let cfg = RouterConfig::new(e, k).with_score(ScoreFn::SqrtSoftplus);
    let (p, idx, _) = route_given(&Reference::<T>::new(), &cfg, n, &z, None, None).unwrap();
    let plain: Vec<u32> = idx.iter().map(|&i| (i + 1) % e as u32).collect();
    let ids = ids(n, groups);
    let dropped: Vec<u32> = (0..n * k).map(|a| u32::from(a % 7 == 1)).collect();
    let rf = Reference::<T>::new();
    for be in backends::<T>() {
        for with_ids in [false, true] {
            let what = format!("ids {with_ids} {:?}", be.par());
            for normalize in [false, true] {
                let (want, got) = both!((&rf, T::zero()), (&be, T::nan()), |b, init| {
                    let mut out = vec![init; groups * e];
                    let a = GroupSums {
                        n,
                        cols: e,
                        groups: g_ref(with_ids, &ids, groups, n),
                        normalize,
                        a: &p[..],
                        out: &mut out[..],
                    };
                    b.group_column_sums(a.check(b).unwrap()).unwrap();
                    out
                });
                assert_rel(
                    &format!("{what}: group sums {normalize}"),
                    &got,
                    &want,
                    tol::<T>(),
                );
            }
            // The reference from the logits, the backend from the scores.
            let scores = Some((cfg.score, &p[..]));
            let (want, got) = both!((&rf, None), (&be, scores), |b, scores| {
                let a = LseSqSum {
                    n,
                    groups: g_ref(with_ids, &ids, groups, n),
                    e,
                    z: &z[..],
                    scores,
                };
                b.lse_sq_sum(a.check(b).unwrap()).unwrap()
            });
            assert_rel(&format!("{what}: lse^2"), &[got], &[want], tol::<T>());
            for (pl, dr) in [(None, false), (None, true), (Some(&plain[..]), false)] {
                let drop = if dr { dropped.clone() } else { vec![0; n * k] };
                let counts = kept_counts(e, &idx, &drop);
                let (want, got) = both!((&rf, ()), (&be, ()), |b, _unit| {
                    let mut out = RoutingStats::default();
                    let a = CollectStats {
                        n,
                        k,
                        p: &p[..],
                        normalize: true,
                        idx: &idx[..],
                        dropped: &drop[..],
                        counts: &counts[..],
                        plain: pl,
                        groups: g_ref(with_ids, &ids, groups, n),
                        out: &mut out,
                    };
                    b.routing_stats(a.check(b).unwrap()).unwrap();
                    out
                });
                let what = format!("{what} plain {} dropped {dr}", pl.is_some());
                assert_eq!(
                    (&got.counts, &got.routed_counts, got.tokens, got.dropped),
                    (&want.counts, &want.routed_counts, want.tokens, want.dropped),
                    "{what}: stats"
                );
                assert_close_as::<T>(&what, &got.score_sums, &want.score_sums);
            }
        }
    }
}

/// Per-token ids, or runs of `n / count` tokens.
fn g_ref<M: Memory<IdxView = [u32]>>(
    with_ids: bool,
    ids: &[u32],
    count: usize,
    n: usize,
) -> Groups<'_, M> {
    if with_ids {
        Groups::Ids { ids, count }
    } else {
        Groups::Runs { len: n / count }
    }
}

/// Kept assignments per expert of every token.
fn kept_counts(e: usize, idx: &[u32], dropped: &[u32]) -> Vec<u32> {
    let mut c = vec![0u32; e];
    for (&i, &d) in idx.iter().zip(dropped) {
        if d == 0 {
            c[i as usize] += 1;
        }
    }
    c
}

elems_test!(reductions_with_groups_match_reference: reductions(f64, f32));
