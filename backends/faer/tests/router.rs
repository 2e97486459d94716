//! `Router` on the faer backend against the scalar reference, in f32 and f64: forward from logits
//! (indices, dispatch plan and dropped flags exactly; scores and gates to tolerance), backward
//! from logits with every dense loss, and the full forward/backward from tokens with SimBal in
//! both weight layouts. Every configuration runs sequentially and split across rayon blocks.

mod common;

use common::{
    assert_close, assert_close_as, assert_close_scalar, assert_losses, backends, normal,
    per_elem_test, route_given,
};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::router::kernels::{
    BackwardRequest, LblCoef, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::stats::CollectStats;
use simbal_core::tokens::Groups;
use simbal_core::zloss::LseSqSum;
use simbal_core::{
    simbal_loss, Backend, DropPolicy, Gemm, LblConfig, LblLevel, LblNormalization, LogitsPass,
    LossConfig, Reference, Router, RouterConfig, Routing, RoutingStats, Scalar, ScoreFn,
    SimBalConfig, SimBalNorm, SimbalError, SimbalWorkspace, WeightLayout, ZLossConfig,
};
use simbal_faer::{Faer, FaerElem, Par};

/// Router configurations over `e = 16` experts, covering every branch of the row kernels: every
/// score function, renormalisation and scale, group limits (effective and not), capacity with
/// both policies, `k = 1`, `k = E`.
fn configs() -> Vec<RouterConfig> {
    let e = 16;
    let mut v = common::base_configs(e);
    v.extend([
        RouterConfig::new(e, 3)
            .with_score(ScoreFn::Sigmoid)
            .with_renormalize(false),
        RouterConfig::new(e, 4).with_groups(4, 2),
        RouterConfig::new(e, 4).with_groups(4, 4),
        RouterConfig::new(e, 4).with_capacity(1.0, DropPolicy::Probs),
        RouterConfig::new(e, 2).with_capacity(0.5, DropPolicy::Position),
        RouterConfig::new(e, 1),
        RouterConfig::new(e, e),
        RouterConfig::new(e, 4).with_score(ScoreFn::SqrtSoftplus),
        RouterConfig::new(e, 2)
            .with_score(ScoreFn::SqrtSoftplus)
            .with_renormalize(false)
            .with_scale(2.5),
    ]);
    v
}

/// Loss configurations for the backward passes from logits (`n` divisible by 256).
fn dense_losses() -> Vec<LossConfig> {
    let seq = LblConfig {
        level: LblLevel::sequences(256),
        ..LblConfig::default()
    };
    let hf = LblConfig {
        normalization: LblNormalization::HuggingFace,
        alpha: 0.03,
        ..LblConfig::default()
    };
    let global = LblConfig {
        level: LblLevel::GlobalBatch,
        ..LblConfig::default()
    };
    vec![
        LossConfig::none(),
        LossConfig::switch(),
        LossConfig::none().with_lbl(seq),
        LossConfig::none().with_lbl(hf),
        LossConfig::none().with_lbl(global),
        LossConfig::none().with_z_loss(ZLossConfig { beta: 0.01 }),
        LossConfig::none()
            .with_lbl(seq)
            .with_z_loss(ZLossConfig::default()),
    ]
}

/// Logits with structure: random rows, rows with exact ties, constant rows, huge magnitudes.
fn logits<T: Scalar>(n: usize, e: usize, seed: u64) -> Vec<T> {
    let mut z = normal::<T>(seed, n * e, 3.0);
    for t in (0..n).step_by(7) {
        // Exact ties between pairs of experts.
        for c in (0..e).step_by(2) {
            z[t * e + c + 1] = z[t * e + c];
        }
    }
    for t in (3..n).step_by(97) {
        z[t * e..(t + 1) * e].fill(T::of(0.25));
    }
    for t in (5..n).step_by(131) {
        // Large, yet lse(z)^2 stays finite for the z-loss (1e30 is tested on its own).
        let big = if T::NAME == "f32" { 1e15 } else { 1e100 };
        for c in 0..e {
            z[t * e + c] = T::of(big * ((c % 5) as f64 - 2.0));
        }
    }
    z
}

/// Global statistics: this batch's merged with another shard's.
fn global_stats(mut g: RoutingStats, e: usize) -> RoutingStats {
    let other = RoutingStats {
        counts: (0..e as u64).map(|c| 3 * c + 1).collect(),
        routed_counts: (0..e as u64).map(|c| 2 * c + 3).collect(),
        score_sums: (0..e).map(|c| 0.5 + c as f64).collect(),
        tokens: 200,
        dropped: 0,
    };
    g.merge(&other).unwrap();
    g
}

/// Statistics of a pass (through the backend's `routing_stats`).
fn stats_of<B: Backend>(pass: &LogitsPass<'_, B>) -> RoutingStats {
    let mut s = RoutingStats::default();
    pass.stats_into(&mut s).unwrap();
    s
}

fn compare_forward<T: FaerElem>(what: &str, fa: &Routing<Faer<T>>, rf: &Routing<Reference<T>>) {
    assert_eq!(fa.indices(), rf.indices(), "{what}: indices");
    assert_eq!(fa.dropped(), rf.dropped(), "{what}: dropped");
    assert_eq!(fa.counts(), rf.counts(), "{what}: counts");
    assert_eq!(
        fa.dispatch_order(),
        rf.dispatch_order(),
        "{what}: dispatch order"
    );
    assert_eq!(
        fa.dispatch_offsets(),
        rf.dispatch_offsets(),
        "{what}: offsets"
    );
    assert_close(&format!("{what}: scores"), fa.scores(), rf.scores());
    assert_close(&format!("{what}: gates"), fa.gates(), rf.gates());
}

fn logits_path<T: FaerElem>() {
    let (n, e) = (2048, 16);
    let z = logits::<T>(n, e, 11);
    let bias = normal::<T>(12, e, 0.05);
    for (ci, cfg) in configs().into_iter().enumerate() {
        let k = cfg.k;
        let dw = normal::<T>(13 + ci as u64, n * k, 1.0);
        for with_bias in [false, true] {
            let bias = with_bias.then_some(bias.as_slice());
            let mut rf = Router::new(Reference::<T>::new(), cfg).unwrap();
            let mut rp = rf.forward_logits(&z, bias).unwrap();
            let sr = stats_of(&rp);
            let global = global_stats(sr.clone(), e);
            for be in backends::<T>() {
                let what = format!("config {ci} bias {with_bias} {:?}", be.par());
                let mut fa = Router::new(be, cfg).unwrap();
                let mut fp = fa.forward_logits(&z, bias).unwrap();
                compare_forward(&what, &fp, &rp);
                let sf = stats_of(&fp);
                assert_eq!(sf.counts, sr.counts, "{what}: stats counts");
                assert_eq!(sf.routed_counts, sr.routed_counts, "{what}: routed counts");
                assert_eq!(sf.dropped, sr.dropped, "{what}: stats dropped");
                assert_eq!(sf.tokens, sr.tokens, "{what}: stats tokens");
                assert_close_as::<T>(
                    &format!("{what}: score sums"),
                    &sf.score_sums,
                    &sr.score_sums,
                );
                for (li, losses) in dense_losses().into_iter().enumerate() {
                    let what = format!("{what} losses {li}");
                    let gr = rp.backward(&dw, &losses, Some(&global)).unwrap();
                    let gf = fp.backward(&dw, &losses, Some(&global)).unwrap();
                    assert_close(&format!("{what}: dz"), gf.dz, gr.dz);
                    assert_losses(&what, &gf.losses, &gr.losses);
                }
            }
        }
    }
}

per_elem_test!(logits_path: logits_path_f32 = f32, logits_path_f64 = f64);

/// More experts per token than the one-pass top-k keeps on the stack: core's selection.
#[test]
fn large_k_falls_back_to_core_selection() {
    let (n, e, k) = (300, 100, 70);
    let z = logits::<f64>(n, e, 5);
    let cfg = RouterConfig::new(e, k);
    let mut rf = Router::new(Reference::<f64>::new(), cfg).unwrap();
    let rp = rf.forward_logits(&z, None).unwrap();
    for be in backends::<f64>() {
        let mut fa = Router::new(be, cfg).unwrap();
        let fp = fa.forward_logits(&z, None).unwrap();
        compare_forward("k = 70", &fp, &rp);
    }
}

/// Non-finite logits straight into the route kernel (the router's finite check is bypassed):
/// NaN ranks below every number, infinities order as numbers, indices agree exactly.
#[test]
fn non_finite_logits_select_like_reference() {
    let (n, e, k) = (1024, 16, 3);
    let mut z = logits::<f32>(n, e, 8);
    for t in 0..n {
        match t % 4 {
            0 => z[t * e + t % e] = f32::NAN,
            1 => z[t * e + (t + 3) % e] = f32::INFINITY,
            2 => z[t * e + (t + 5) % e] = f32::NEG_INFINITY,
            _ => z[t * e..(t + 1) * e].fill(f32::NAN),
        }
    }
    for score in [ScoreFn::Sigmoid, ScoreFn::Softmax] {
        let cfg = RouterConfig::new(e, k).with_score(score);
        let want = route_given(&Reference::<f32>::new(), &cfg, n, &z, None, None).unwrap();
        for be in backends::<f32>() {
            let got = route_given(&be, &cfg, n, &z, None, None).unwrap();
            assert_eq!(got.1, want.1, "{score:?}: indices");
            // Scores and gates lie in [0, 1] (scale 1): NaN where the reference has NaN,
            // otherwise within the SPEC's f32 tolerance (the vectorised exp is not bitwise
            // the C library's).
            let tol = <f32 as Scalar>::CONFORMANCE_TOL as f32;
            let same = |a: &[f32], b: &[f32]| {
                a.iter().zip(b).all(|(x, y)| {
                    x.to_bits() == y.to_bits()
                        || (x.is_nan() && y.is_nan())
                        || (x.is_finite() && y.is_finite() && (x - y).abs() <= tol)
                })
            };
            assert!(same(&got.0, &want.0), "{score:?}: scores");
            assert!(same(&got.2, &want.2), "{score:?}: gates");
        }
    }
}

/// Gap between the k-th and (k+1)-th selection key of each row of `p` (+ `bias`).
fn topk_gaps(p: &[f64], e: usize, k: usize, bias: Option<&[f64]>) -> Vec<f64> {
    p.chunks(e)
        .map(|row| {
            let mut keys: Vec<f64> = row
                .iter()
                .enumerate()
                .map(|(c, &v)| v + bias.map_or(0.0, |b| b[c]))
                .collect();
            keys.sort_by(|a, b| b.partial_cmp(a).unwrap());
            keys[k - 1] - keys[k]
        })
        .collect()
}

/// Tokens `n x d` whose top-k (with and without `bias`) is at least `min_gap` from a tie under
/// the weight `r` (`d x e`): rows too close to a tie are redrawn.
fn clear_tokens(n: usize, d: usize, e: usize, k: usize, r: &[f64], bias: &[f64]) -> Vec<f64> {
    let min_gap = 1e-4;
    let mut x = normal::<f64>(21, n * d, 1.0);
    let cfg = RouterConfig::new(e, k);
    for round in 0..20u64 {
        let mut router = Router::new(Reference::<f64>::new(), cfg).unwrap();
        let mut redraw = vec![false; n];
        for b in [None, Some(bias)] {
            let pass = router.forward(&x, r, b).unwrap();
            let gaps = topk_gaps(pass.scores(), e, k, b);
            for (t, g) in gaps.iter().enumerate() {
                redraw[t] |= *g < min_gap;
            }
        }
        if !redraw.contains(&true) {
            return x;
        }
        for (t, _) in redraw.iter().enumerate().filter(|(_, &r)| r) {
            let fresh = normal::<f64>(1000 + 31 * round + t as u64, d, 1.0);
            x[t * d..(t + 1) * d].copy_from_slice(&fresh);
        }
    }
    panic!("fixture: could not clear the top-k ties");
}

/// Loss configurations of the full pass: SimBal in each norm, alone and with LBL and z-loss.
fn full_losses() -> Vec<LossConfig> {
    let l1 = SimBalConfig::default();
    let fro = SimBalConfig {
        lambda: 0.05,
        norm: SimBalNorm::FrobeniusSq,
    };
    let sf = SimBalConfig {
        lambda: 0.2,
        norm: SimBalNorm::ScaleFree,
    };
    vec![
        LossConfig::none(),
        LossConfig::simbal(),
        LossConfig::none().with_simbal(fro),
        LossConfig::none().with_simbal(sf),
        LossConfig::switch()
            .with_simbal(l1)
            .with_z_loss(ZLossConfig::default()),
    ]
}

/// Forward from tokens and backward with SimBal, f64 reference fixtures checked to sit away from
/// top-k boundaries and SimBal kinks, so f32 rounding cannot flip a choice.
fn token_path<T: FaerElem>() {
    let (n, d, e, k) = (1024, 48, 16, 4);
    let r64 = normal::<f64>(22, d * e, 1.0 / (d as f64).sqrt());
    let b64 = normal::<f64>(23, e, 0.01);
    let x64 = clear_tokens(n, d, e, k, &r64, &b64);
    let dw64 = normal::<f64>(24, n * k, 1.0);
    let cast = |v: &[f64]| v.iter().map(|&x| T::of(x)).collect::<Vec<T>>();
    let (x, r, bias, dw) = (cast(&x64), cast(&r64), cast(&b64), cast(&dw64));
    for layout in [WeightLayout::DxE, WeightLayout::ExD] {
        // The same weight in either layout (ExD stores its transpose).
        let (r, r64) = match layout {
            WeightLayout::DxE => (r.clone(), r64.clone()),
            WeightLayout::ExD => {
                let t = |m: &[f64]| {
                    (0..e * d)
                        .map(|i| m[(i % d) * e + i / d])
                        .collect::<Vec<f64>>()
                };
                (cast(&t(&r64)), t(&r64))
            }
        };
        let cfg = RouterConfig::new(e, k).with_layout(layout);
        // Fixture check in f64: every row's top-k is clear of rounding, and |G_ab| is too.
        let mut r64_router = Router::new(Reference::<f64>::new(), cfg).unwrap();
        let pass = r64_router.forward(&x64, &r64, Some(&b64)).unwrap();
        let gap = topk_gaps(pass.scores(), e, k, Some(&b64))
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        assert!(gap >= 1e-4, "fixture: top-k gap {gap} too small for f32");
        let r64be = Reference::<f64>::new();
        let mut ws = SimbalWorkspace::new(&r64be, layout, d, e).unwrap();
        simbal_loss(&r64be, &SimBalConfig::default(), &r64, None, &mut ws).unwrap();
        let kink = ws
            .multiplier()
            .iter()
            .map(|g| g.abs())
            .fold(f64::INFINITY, f64::min);
        assert!(
            kink > 1e-4,
            "fixture: SimBal entry {kink} too close to its kink"
        );

        for with_bias in [false, true] {
            let bias = with_bias.then_some(bias.as_slice());
            for (li, losses) in full_losses().into_iter().enumerate() {
                let mut rf = Router::new(Reference::<T>::new(), cfg).unwrap();
                let mut rp = rf.forward(&x, &r, bias).unwrap();
                let gr = rp.backward(&dw, &losses, None).unwrap();
                let (vr, rdz, rdx, rdr) =
                    (gr.losses, gr.dz.to_vec(), gr.dx.to_vec(), gr.dr.to_vec());
                for be in backends::<T>() {
                    let what = format!("{layout:?} bias {with_bias} losses {li} {:?}", be.par());
                    let mut fa = Router::new(be, cfg).unwrap();
                    // Twice: the second step reuses the workspace.
                    for _ in 0..2 {
                        let mut fp = fa.forward(&x, &r, bias).unwrap();
                        compare_forward(&what, &fp, &rp);
                        assert_close(&format!("{what}: logits"), fp.logits(), rp.logits());
                        let gf = fp.backward(&dw, &losses, None).unwrap();
                        assert_close(&format!("{what}: dz"), gf.dz, &rdz);
                        assert_close(&format!("{what}: dx"), gf.dx, &rdx);
                        assert_close(&format!("{what}: dr"), gf.dr, &rdr);
                        assert_losses(&what, &gf.losses, &vr);
                    }
                }
            }
        }
    }
}

per_elem_test!(token_path: token_path_f32 = f32, token_path_f64 = f64);

/// Bad input to the overridden kernels is refused with core's typed errors by the arguments'
/// checks, before any kernel runs: never a panic.
#[test]
fn kernels_refuse_bad_input() {
    let be = Faer::<f32>::with_par(Par::rayon(4));
    let (n, e, k) = (8, 4, 2);
    let cfg = RouterConfig::new(e, k);
    let z = vec![0.0f32; n * e];
    let (p, idx, w) = route_given(&be, &cfg, n, &z, None, None).unwrap();
    let route = |cfg: &RouterConfig, n: usize, z: &[f32], bias: Option<&[f32]>| {
        route_given(&be, cfg, n, z, bias, None).map(|_| ())
    };
    let err = route(&cfg, n, &z[e..], None).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch { what: "logits", .. }
    ));
    let err = route(&cfg, n, &z, Some(&[0.0; 3])).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "selection bias",
            ..
        }
    ));
    // An invalid configuration (E = 0, k = 0) is an error.
    let err = route(&RouterConfig::new(0, 1), 0, &[], None).unwrap_err();
    assert!(matches!(err, SimbalError::ZeroDim { what: "E" }));
    assert!(route(&RouterConfig::new(4, 0), 0, &[], None).is_err());
    let err = Route::<Faer<f32>> {
        cfg: &cfg,
        n,
        logits: Logits::Tokens {
            gemm: Gemm::new(n, e, 3),
            x: &[0.0; 3 * 8],
            r: &[0.0; 11],
        },
        bias: None,
        z: &mut vec![0.0; n * e],
        p: &mut vec![0.0; n * e],
        idx: &mut vec![0; n * k],
        gates: &mut vec![0.0; n * k],
        plain: None,
        request: RouteRequest::default(),
    }
    .check(&be)
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "router weight",
            ..
        }
    ));

    let dropped = vec![0u32; n * k];
    let dw = vec![1.0f32; n * k];
    let mut dz = vec![0.0f32; n * e];
    let coef = vec![0.0f32; e];
    let mut backward = |idx: &[u32], dw: &[f32], group_len: Option<usize>| {
        RouterBackward {
            cfg: &cfg,
            n,
            z: &z[..],
            p: &p[..],
            idx,
            gates: &w[..],
            dropped: &dropped[..],
            dw,
            groups: group_len.map_or(Groups::whole(n), |len| Groups::Runs { len }),
            lbl: group_len.map(|_| LblCoef {
                coef: &coef[..],
                normalize: false,
            }),
            z_coef: 0.0,
            dz: &mut dz[..],
            request: BackwardRequest::default(),
        }
        .check(&be)
        .map(|a| be.router_backward(a).map(|_| ()))
    };
    assert!(backward(&idx, &dw, None).is_ok());
    let mut bad_idx = idx.clone();
    bad_idx[3] = e as u32;
    let err = backward(&bad_idx, &dw, None).unwrap_err();
    assert!(matches!(err, SimbalError::Backend { .. }));
    let err = backward(&idx, &dw, Some(3)).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::SequenceLength {
            seq_len: 3,
            tokens: 8
        }
    ));
    let err = backward(&idx, &dw, Some(4)).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "LBL coefficients",
            ..
        }
    ));
    let err = backward(&idx, &dw[1..], None).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "gate gradient",
            ..
        }
    ));

    assert!(lse_sq_sum(&be, n, e, &z[1..], None).is_err());
    assert!(lse_sq_sum(&be, n, e, &z, Some(&p[1..])).is_err());
    assert!(group_sums(&be, n, e, 3, &z, &mut [0.0; 4]).is_err());
    assert!(group_sums(&be, n, e, 4, &z, &mut [0.0; 4]).is_err());
    let mut x = vec![1.0f32; 3 * 50_000];
    assert!(be.check_finite("X", 50_000, &x).is_ok());
    x[2 * 50_000 + 777] = f32::NAN;
    let err = be.check_finite("X", 50_000, &x).unwrap_err();
    assert_eq!(
        err,
        SimbalError::NonFinite {
            what: "X",
            row: 2,
            col: 777
        }
    );
}

/// `sum lse^2` of `n x e` logits through the backend's kernel (from the scores when given).
fn lse_sq_sum<T: Scalar, B: Backend<Elem = T, View = [T], Value = T>>(
    be: &B,
    n: usize,
    e: usize,
    z: &[T],
    softmax: Option<&[T]>,
) -> simbal_core::Result<T> {
    let scores = softmax.map(|p| (ScoreFn::Softmax, p));
    let groups = Groups::whole(n);
    be.lse_sq_sum(
        LseSqSum {
            n,
            groups,
            e,
            z,
            scores,
        }
        .check(be)?,
    )
}

/// Per-group column sums through the backend's kernel.
fn group_sums<T: Scalar, B: Backend<Elem = T, View = [T]>>(
    be: &B,
    n: usize,
    cols: usize,
    group_len: usize,
    a: &[T],
    out: &mut [T],
) -> simbal_core::Result<()> {
    be.group_column_sums(
        GroupSums {
            n,
            cols,
            groups: Groups::Runs { len: group_len },
            normalize: false,
            a,
            out,
        }
        .check(be)?,
    )
}

/// Kernels called directly agree with the reference on their own, including reductions over
/// many sequences (parallel over groups), the fixed-split logsumexp sums (from the logits and
/// from their softmax) and the routing statistics; the reductions do not depend on the thread
/// count.
#[test]
fn reductions_match_reference() {
    let (n, e) = (4096, 8);
    let z = logits::<f64>(n, e, 3);
    let mut p = vec![0.0; n * e];
    simbal_core::metrics::softmax_rows(e, &z, &mut p).unwrap();
    let rf = Reference::<f64>::new();
    for be in backends::<f64>() {
        for group_len in [n, 512, 64, 1] {
            let mut want = vec![0.0; (n / group_len) * e];
            let mut got = vec![f64::NAN; (n / group_len) * e];
            group_sums(&rf, n, e, group_len, &z, &mut want).unwrap();
            group_sums(&be, n, e, group_len, &z, &mut got).unwrap();
            assert_close(&format!("group sums {group_len}"), &got, &want);
        }
        for rows in [n, 1000, 65, 3, 1, 0] {
            let (z, p) = (&z[..rows * e], &p[..rows * e]);
            let want = lse_sq_sum(&rf, rows, e, z, None).unwrap();
            let got = lse_sq_sum(&be, rows, e, z, None).unwrap();
            assert_close_scalar(&format!("lse^2 sum {rows}"), got, want, 1e-300);
            let got = lse_sq_sum(&be, rows, e, z, Some(p)).unwrap();
            assert_close_scalar(&format!("lse^2 sum from p {rows}"), got, want, 1e-300);
        }
    }
    let stats = |be: &Faer<f64>| {
        let counts = vec![3u32; e];
        let (idx, dropped) = (vec![1u32; 2 * n], vec![0u32; 2 * n]);
        let mut out = RoutingStats::default();
        let a = CollectStats {
            n,
            k: 2,
            p: &p[..],
            normalize: false,
            idx: &idx[..],
            dropped: &dropped[..],
            counts: &counts[..],
            plain: None,
            groups: Groups::whole(n),
            out: &mut out,
        };
        be.routing_stats(a.check(be).unwrap()).unwrap();
        out
    };
    let want = {
        let mut s = RoutingStats::empty(e);
        for row in p.chunks(e) {
            s.score_sums.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        s
    };
    // The sums do not depend on the thread count.
    let (seq, par) = (
        Faer::<f64>::with_par(Par::Seq),
        Faer::<f64>::with_par(Par::rayon(3)),
    );
    let (a, b) = (stats(&seq), stats(&par));
    assert_eq!(a, b);
    assert_close_as::<f64>("score sums", &a.score_sums, &want.score_sums);
    assert_eq!(
        (a.counts, a.tokens, a.dropped),
        (vec![3; e], n as u64, 2 * n as u64 - 24)
    );
    for softmax in [None, Some(&p[..])] {
        let a = lse_sq_sum(&seq, n, e, &z, softmax).unwrap();
        let b = lse_sq_sum(&par, n, e, &z, softmax).unwrap();
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

/// Logits of magnitude 1e30 in f32 route to finite scores and gates, like the reference.
#[test]
fn huge_logits_stay_finite() {
    let (n, e, k) = (1024, 16, 4);
    let mut z = normal::<f32>(9, n * e, 1.0);
    z.iter_mut().for_each(|v| *v *= 1e30);
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        let cfg = RouterConfig::new(e, k).with_score(score);
        let mut rf = Router::new(Reference::<f32>::new(), cfg).unwrap();
        let rp = rf.forward_logits(&z, None).unwrap();
        for be in backends::<f32>() {
            let mut fa = Router::new(be, cfg).unwrap();
            let fp = fa.forward_logits(&z, None).unwrap();
            assert!(fp.scores().iter().all(|v| v.is_finite()));
            assert!(fp.gates().iter().all(|v| v.is_finite()));
            compare_forward(&format!("1e30 {score:?}"), &fp, &rp);
        }
    }
}
