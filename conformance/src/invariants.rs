//! SPEC invariants, checked on the backend itself (tolerance `B::Elem::CONFORMANCE_TOL`
//! relative to the output's scale).

use crate::gen::{self, Case, LossSet};
use crate::run::{self, Inputs};
use crate::util::*;
use proptest::prelude::*;
use simbal_core::{
    orthogonal_init, orthogonality_error, simbal_loss, update_bias, Backend, BiasUpdateConfig,
    DropPolicy, LblConfig, LblLevel, LblNormalization, LoadMetrics, LossConfig, Rng, Router,
    RouterConfig, RoutingStats, Scalar, ScoreFn, SimBalConfig, SimBalNorm, SimbalError,
    SimbalWorkspace, WeightLayout, ZLossConfig,
};

const NORMS: [SimBalNorm; 3] = [
    SimBalNorm::L1,
    SimBalNorm::FrobeniusSq,
    SimBalNorm::ScaleFree,
];
const LAYOUTS: [WeightLayout; 2] = [WeightLayout::DxE, WeightLayout::ExD];

/// Runs SimBal on the backend: `(loss, gradient)`.
fn simbal_on<B: Backend>(
    b: &B,
    cfg: &SimBalConfig,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
) -> simbal_core::Result<(f64, Vec<f64>)> {
    let mut ws = SimbalWorkspace::new(b, d, e)?;
    let rb = up(b, r)?;
    let mut g = b.zeros(d * e)?;
    let l = simbal_loss(b, cfg, layout, d, e, &rb, Some(&mut g), &mut ws)?;
    Ok((l.to_f64_lossy(), down(b, &g)?))
}

/// A `D x E` (`D >= E`) signed partial permutation in `layout`: exactly orthonormal columns in
/// any precision, so `G = R^T R - I` is exactly 0.
fn signed_permutation(layout: WeightLayout, d: usize, e: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut rows: Vec<usize> = (0..d).collect();
    for i in 0..d {
        let j = i + rng.below(d - i);
        rows.swap(i, j);
    }
    let (rs, cs) = simbal_core::ops::simbal::strides(layout, d, e);
    let mut r = vec![0.0; d * e];
    for c in 0..e {
        r[rows[c] * rs + c * cs] = if rng.below(2) == 0 { 1.0 } else { -1.0 };
    }
    r
}

/// SimBal is 0 with zero gradient at orthogonality (`D >= E`), every norm and layout.
///
/// Exactly orthogonal weights (signed permutations) give exactly 0 loss and gradient. The
/// orthogonal init (Householder QR) is orthogonal to rounding: every loss is then ~0, and the
/// FrobeniusSq and ScaleFree gradients are ~0; the L1 gradient `2 lambda R sign(G)` is not
/// (`sign` of rounding noise), which is the kink the SPEC excludes, so it is not asserted there.
/// Also checks `orthogonal_init` itself (orthonormal columns for `D >= E`, rows for `D < E`).
pub fn simbal_zero_at_orthogonality<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::simbal_zero_at_orthogonality";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    for &(d, e) in &[(1, 1), (2, 2), (3, 2), (5, 5), (8, 3), (16, 8)] {
        for layout in LAYOUTS {
            for seed in 0..3u64 {
                let exact = signed_permutation(layout, d, e, seed);
                let init = to_f64(
                    &orthogonal_init::<B::Elem>(layout, d, e, seed)
                        .unwrap_or_else(|err| panic!("{NAME}: orthogonal_init: {err:?}")),
                );
                let (ms, mx) = orthogonality_error(layout, d, e, &init)
                    .unwrap_or_else(|err| panic!("{NAME}: orthogonality_error: {err:?}"));
                assert!(
                    ms <= tol && mx <= tol,
                    "{NAME}: orthogonal_init {layout:?} {d}x{e} has orthogonality error ({ms}, {mx})"
                );
                for norm in NORMS {
                    let cfg = SimBalConfig { lambda: 0.7, norm };
                    let tag = format!("{NAME}: {norm:?} {layout:?} D={d} E={e} seed={seed}");
                    let (l, g) = simbal_on(&b, &cfg, layout, d, e, &exact)
                        .unwrap_or_else(|err| panic!("{tag}: {err:?}"));
                    assert!(l == 0.0, "{tag}: loss {l} at an exactly orthogonal weight");
                    assert!(
                        g.iter().all(|&v| v == 0.0),
                        "{tag}: gradient {g:?} at an exactly orthogonal weight"
                    );
                    let (l, g) = simbal_on(&b, &cfg, layout, d, e, &init)
                        .unwrap_or_else(|err| panic!("{tag}: {err:?}"));
                    assert!(l.abs() <= tol, "{tag}: loss {l} at orthogonal_init");
                    if norm != SimBalNorm::L1 {
                        let worst = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                        assert!(worst <= tol, "{tag}: gradient {worst} at orthogonal_init");
                    }
                }
            }
        }
    }
    // D < E: orthonormal rows.
    for layout in LAYOUTS {
        let (d, e) = (3, 7);
        let r = to_f64(&orthogonal_init::<B::Elem>(layout, d, e, 5).expect("orthogonal_init"));
        let (rs, cs) = simbal_core::ops::simbal::strides(layout, d, e);
        for i in 0..d {
            for j in 0..d {
                let dot: f64 = (0..e)
                    .map(|c| r[i * rs + c * cs] * r[j * rs + c * cs])
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (dot - want).abs() <= tol,
                    "{NAME}: D < E rows not orthonormal ({dot})"
                );
            }
        }
    }
}

/// A perfectly balanced routing on the logits path: `N = m E` tokens, token `t` prefers experts
/// `t, t+1, ..., t+k-1 (mod E)` with distinct logits; every expert gets `m k` assignments and
/// (softmax, by the cyclic symmetry) mean score `1/E`.
fn balanced_logits(e: usize, k: usize, m: usize) -> Vec<f64> {
    let n = m * e;
    let mut z = vec![0.0; n * e];
    for t in 0..n {
        for j in 0..k {
            z[t * e + (t + j) % e] = 3.0 - 0.5 * j as f64;
        }
    }
    z
}

/// LBL equals `alpha` at perfect balance (`k alpha` under HuggingFace), at micro-batch,
/// sequence (each sequence balanced) and global-batch (merged statistics balanced) level.
pub fn lbl_alpha_at_balance<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::lbl_alpha_at_balance";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    for &(e, k) in &[(1, 1), (2, 1), (4, 2), (5, 3), (6, 6)] {
        for renorm in [true, false] {
            let m = 2;
            let n = m * e;
            let cfg = RouterConfig::new(e, k).with_renormalize(renorm);
            let b = fresh(make);
            let z = up(&b, &balanced_logits(e, k, m)).expect("upload");
            let dw = up(&b, &vec![0.0; n * k]).expect("upload");
            let mut router = Router::new(b, cfg).expect("Router::new");
            router.forward_logits(&z, None, n).expect("forward_logits");
            let counts = down_idx(router.backend(), router.counts().unwrap()).unwrap();
            assert!(
                counts.iter().all(|&c| c as usize == m * k),
                "{NAME}: the designed routing is not balanced: {counts:?}"
            );
            let own = router.stats().expect("stats");
            for normalization in [LblNormalization::Switch, LblNormalization::HuggingFace] {
                for level in [
                    LblLevel::MicroBatch,
                    LblLevel::Sequence { seq_len: e },
                    LblLevel::Sequence { seq_len: n },
                    LblLevel::GlobalBatch,
                ] {
                    let alpha = 0.37;
                    let lc = LblConfig {
                        alpha,
                        level,
                        normalization,
                    };
                    let v = router
                        .backward_logits(&dw, &LossConfig::none().with_lbl(lc), Some(&own))
                        .unwrap_or_else(|err| panic!("{NAME}: {lc:?}: {err:?}"));
                    let want = match normalization {
                        LblNormalization::Switch => alpha,
                        LblNormalization::HuggingFace => alpha * k as f64,
                    };
                    let got = v.lbl.to_f64_lossy();
                    assert!(
                        (got - want).abs() <= tol * want.max(1.0),
                        "{NAME}: E={e} k={k} renorm={renorm} {lc:?}: LBL {got}, want {want}"
                    );
                    assert_eq!(v.total, v.lbl, "{NAME}: total must equal the only loss");
                }
            }
        }
    }
}

/// Sequence-level LBL with one sequence (`seq_len = N`) equals micro-batch LBL, and global-batch
/// LBL from the batch's own statistics equals micro-batch LBL (values and `dZ`).
pub fn lbl_levels_agree<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::lbl_levels_agree";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, 32, gen::case(gen::SMALL, LossSet::NoSimBal), |case| {
        let data = case.data();
        let b = fresh(make);
        let inp = Inputs::new(&b, &data).ctx("upload")?;
        let mut router = Router::new(b, case.cfg).ctx("Router::new")?;
        router
            .forward(&inp.x, &inp.r, inp.bias.as_ref(), case.n, case.d)
            .ctx("forward")?;
        let own = router.stats().ctx("stats")?;
        let normalization = case
            .losses
            .lbl
            .map_or(LblNormalization::Switch, |l| l.normalization);
        let mut run_level = |level| -> Result<(f64, Vec<f64>), TestCaseError> {
            let lc = LblConfig {
                alpha: 0.3,
                level,
                normalization,
            };
            let v = router
                .backward(
                    &inp.x,
                    &inp.r,
                    &inp.dw,
                    &LossConfig::none().with_lbl(lc),
                    Some(&own),
                )
                .ctx("backward")?;
            Ok((
                v.lbl.to_f64_lossy(),
                down(router.backend(), router.dz().ctx("dz")?).ctx("dz")?,
            ))
        };
        let micro = run_level(LblLevel::MicroBatch)?;
        let seq = run_level(LblLevel::Sequence { seq_len: case.n })?;
        let global = run_level(LblLevel::GlobalBatch)?;
        close1("sequence (B = 1) vs micro-batch LBL", seq.0, micro.0, tol)?;
        close("sequence (B = 1) vs micro-batch dZ", &seq.1, &micro.1, tol)?;
        close1(
            "global (own stats) vs micro-batch LBL",
            global.0,
            micro.0,
            tol,
        )?;
        close(
            "global (own stats) vs micro-batch dZ",
            &global.1,
            &micro.1,
            tol,
        )
    });
}

/// Statistics merged over shards equal those of the whole batch (counts, tokens, dropped
/// exactly; score sums to tolerance); the empty statistics are the identity; merging is
/// order-independent for counts.
pub fn merged_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::merged_stats";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let lim = gen::Limits { n: 12, d: 4, e: 6 };
    let strategy = (gen::case(lim, LossSet::NoSimBal), any::<u64>());
    run_prop(NAME, 32, strategy, |(case, cut_seed)| {
        let cfg = RouterConfig {
            capacity: None, // capacity depends on N: shards would drop differently
            ..case.cfg
        };
        let data = case.data();
        let (n, d, e) = (case.n, case.d, case.e);
        let stats_of = |rows: std::ops::Range<usize>| -> Result<RoutingStats, TestCaseError> {
            let b = fresh(make);
            let x = up(&b, &data.x[rows.start * d..rows.end * d]).ctx("upload")?;
            let r = up(&b, &data.r).ctx("upload")?;
            let bias = match &data.bias {
                Some(v) => Some(up(&b, v).ctx("upload")?),
                None => None,
            };
            let mut router = Router::new(b, cfg).ctx("Router::new")?;
            router
                .forward(&x, &r, bias.as_ref(), rows.len(), d)
                .ctx("forward")?;
            router.stats().ctx("stats")
        };
        let whole = stats_of(0..n)?;
        let mut rng = Rng::new(cut_seed);
        let mut cuts = vec![0, n];
        for _ in 0..rng.below(4) {
            if n > 1 {
                cuts.push(1 + rng.below(n - 1));
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut merged = RoutingStats::empty(e);
        let mut shards = Vec::new();
        for w in cuts.windows(2) {
            let s = stats_of(w[0]..w[1])?;
            merged.merge(&s).ctx("merge")?;
            shards.push(s);
        }
        let mut reversed = RoutingStats::empty(e);
        for s in shards.iter().rev() {
            reversed.merge(s).ctx("merge")?;
        }
        same("merged counts", &merged.counts, &whole.counts)?;
        same(
            "merged counts (reverse order)",
            &reversed.counts,
            &whole.counts,
        )?;
        same(
            "merged tokens, dropped",
            &[merged.tokens, merged.dropped],
            &[whole.tokens, whole.dropped],
        )?;
        close(
            "merged score sums",
            &merged.score_sums,
            &whole.score_sums,
            tol,
        )?;
        ensure(
            LoadMetrics::from_counts(&merged.counts) == LoadMetrics::from_counts(&whole.counts),
            || "load metrics of merged statistics differ".into(),
        )?;
        let mut id = RoutingStats::empty(e);
        id.merge(&whole).ctx("merge")?;
        ensure(id == whole, || {
            "empty statistics are not the identity".into()
        })
    });
}

/// Softmax rows sum to 1; sigmoid scores lie in [0, 1]; gates are `s p_i` or, renormalised,
/// `s p_i / sum_l p_l` of the chosen experts (so they sum to `s`), whatever the selection bias.
pub fn score_and_gate_normalisation<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::score_and_gate_normalisation";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    run_prop(NAME, 48, gen::case(gen::SMALL, LossSet::NoSimBal), |case| {
        let cfg = RouterConfig {
            capacity: None,
            ..case.cfg
        };
        let case = Case { cfg, ..case };
        let data = case.data();
        let b = fresh(make);
        let inp = Inputs::new(&b, &data).ctx("upload")?;
        let mut router = Router::new(b, cfg).ctx("Router::new")?;
        router
            .forward(&inp.x, &inp.r, inp.bias.as_ref(), case.n, case.d)
            .ctx("forward")?;
        let f = run::read_forward(&router).ctx("read")?;
        let (e, k, s) = (case.e, case.k, cfg.scale);
        for t in 0..case.n {
            let pr = &f.p[t * e..(t + 1) * e];
            match cfg.score {
                ScoreFn::Softmax => {
                    close1(&format!("softmax row {t} sum"), pr.iter().sum(), 1.0, tol)?
                }
                ScoreFn::Sigmoid => ensure(pr.iter().all(|&v| (0.0..=1.0).contains(&v)), || {
                    format!("sigmoid scores out of [0, 1]: {pr:?}")
                })?,
            }
            let ir = &f.idx[t * k..(t + 1) * k];
            let wr = &f.gates[t * k..(t + 1) * k];
            let sum: f64 = ir.iter().map(|&i| pr[i as usize]).sum();
            let want: Vec<f64> = ir
                .iter()
                .map(|&i| {
                    if cfg.renormalize {
                        s * pr[i as usize] / sum
                    } else {
                        s * pr[i as usize]
                    }
                })
                .collect();
            close(&format!("gates of token {t}"), wr, &want, tol)?;
            if cfg.renormalize {
                close1(
                    &format!("renormalised gates of token {t} sum"),
                    wr.iter().sum(),
                    s,
                    tol,
                )?;
            }
            let mut sorted = ir.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            ensure(
                sorted.len() == k && sorted.iter().all(|&i| (i as usize) < e),
                || format!("token {t}: indices {ir:?} are not k distinct experts"),
            )?;
        }
        Ok(())
    });
}

/// A dropped assignment passes no gradient: changing `dW` at dropped slots changes no loss
/// value, `dZ`, `dX` or `dR`. Its gate is 0 and its flag set.
pub fn dropped_get_no_gradient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::dropped_get_no_gradient";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        gen::case(gen::Limits { n: 8, d: 4, e: 4 }, LossSet::All),
        prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
    );
    run_prop(NAME, 32, strategy, |(case, policy)| {
        // 8 tokens, k = 2 of 4 experts, capacity 2 per expert: at least 8 drops.
        let cfg = RouterConfig {
            experts: 4,
            k: 2,
            groups: None,
            ..case.cfg
        }
        .with_capacity(0.5, policy);
        let case = Case {
            n: 8,
            e: 4,
            k: 2,
            cfg,
            losses: LossConfig {
                lbl: case.losses.lbl.map(|l| match l.level {
                    LblLevel::Sequence { .. } => LblConfig {
                        level: LblLevel::Sequence { seq_len: 4 },
                        ..l
                    },
                    _ => l,
                }),
                ..case.losses
            },
            ..case
        };
        let data = case.data();
        let b = fresh(make);
        let inp = Inputs::new(&b, &data).ctx("upload")?;
        let mut router = Router::new(b, cfg).ctx("Router::new")?;
        let (f, first) = run::step(&mut router, &case, &data, &inp).ctx("step")?;
        let drops: Vec<usize> = (0..f.dropped.len())
            .filter(|&a| f.dropped[a] == 1)
            .collect();
        ensure(drops.len() >= 8, || {
            format!("expected at least 8 drops, got {:?}", f.dropped)
        })?;
        ensure(drops.iter().all(|&a| f.gates[a] == 0.0), || {
            format!("a dropped assignment has a non-zero gate: {:?}", f.gates)
        })?;
        ensure(f.dropped.iter().all(|&v| v <= 1), || {
            format!("flags not 0/1: {:?}", f.dropped)
        })?;
        let mut dw = data.dw.clone();
        let mut rng = Rng::new(case.seed ^ 77);
        for &a in &drops {
            dw[a] += 1e3 * rng.normal();
        }
        let b = router.backend();
        let dwb = up(b, &dw).ctx("upload")?;
        let v = router
            .backward(&inp.x, &inp.r, &dwb, &case.losses, case.global(&data))
            .ctx("backward")?;
        let b = router.backend();
        let second = run::Backward {
            losses: run::loss_array(&v),
            dz: down(b, router.dz().ctx("dz")?).ctx("dz")?,
            dx: down(b, router.dx().ctx("dx")?).ctx("dx")?,
            dr: down(b, router.dr().ctx("dr")?).ctx("dr")?,
        };
        crate::agree::backward_close("dW changed at dropped slots:", &second, &first, tol)
    });
}

/// Repeated aux-loss-free bias updates from the router's own statistics lower `MaxVio` of a
/// router that sends (almost) every token to expert 0; the centred option keeps the mean bias at
/// 0.
pub fn bias_update_balances<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::bias_update_balances";
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
                router
                    .forward(&xb, &rb, Some(&bias), n, d)
                    .expect("forward");
                let s = router.stats().expect("stats");
                last = LoadMetrics::from_counts(&s.counts).max_vio;
                first.get_or_insert(last);
                update_bias(router.backend(), &ucfg, &s, &mut bias).expect("update_bias");
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

/// Logits of magnitude 1e30 stay finite in every precision: scores and gates of
/// `forward_logits`, `dZ` and the loss values of `backward_logits` without z-loss. With z-loss,
/// `lse^2 ~ 1e60` overflows `f32`: that must be `Err(Overflow)`, never an inf/NaN value; in `f64`
/// it is finite.
pub fn huge_logits_stay_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::huge_logits_stay_finite";
    if acquire(make, NAME).is_none() {
        return;
    }
    let big = 1e30;
    let (e, k) = (4usize, 2usize);
    let rows: Vec<[f64; 4]> = vec![
        [big, big, big, big],
        [-big, -big, -big, -big],
        [big, -big, 0.0, 5.0],
        [-big, 1.0, -1.0, big],
        [0.3, -0.2, 0.1, 0.0],
        [-big, -big, big, -big],
    ];
    let n = rows.len();
    let z: Vec<f64> = rows.iter().flatten().copied().collect();
    let dw: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.37).sin()).collect();
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        for renorm in [true, false] {
            for scale in [1.0, 2.5, 16.0] {
                for groups in [None, Some((2, 1))] {
                    let mut cfg = RouterConfig::new(e, k)
                        .with_score(score)
                        .with_renormalize(renorm)
                        .with_scale(scale);
                    if let Some((g, t)) = groups {
                        cfg = cfg.with_groups(g, t);
                    }
                    let tag = format!("{NAME}: {cfg:?}");
                    let b = fresh(make);
                    let zb = up(&b, &z).expect("upload");
                    let dwb = up(&b, &dw).expect("upload");
                    let mut router = Router::new(b, cfg).expect("Router::new");
                    router
                        .forward_logits(&zb, None, n)
                        .unwrap_or_else(|err| panic!("{tag}: forward_logits: {err:?}"));
                    let f = run::read_forward(&router).expect("read");
                    assert!(finite(&f.p), "{tag}: scores {:?}", f.p);
                    assert!(finite(&f.gates), "{tag}: gates {:?}", f.gates);
                    let own = router.stats().expect("stats");
                    assert!(finite(&own.score_sums), "{tag}: stats {own:?}");
                    let h = router.routing_entropy().expect("entropy").to_f64_lossy();
                    assert!(h.is_finite(), "{tag}: routing entropy {h}");
                    for lbl in [None, Some(LblConfig::default())] {
                        let mut losses = LossConfig::none();
                        losses.lbl = lbl;
                        let v = router
                            .backward_logits(&dwb, &losses, Some(&own))
                            .unwrap_or_else(|err| {
                                panic!("{tag} {losses:?}: backward_logits: {err:?}")
                            });
                        let dz = down(router.backend(), router.dz().unwrap()).unwrap();
                        assert!(finite(&dz), "{tag} {losses:?}: dZ {dz:?}");
                        assert!(finite(&run::loss_array(&v)), "{tag}: losses {v:?}");
                        let losses = losses.with_z_loss(ZLossConfig::default());
                        match router.backward_logits(&dwb, &losses, Some(&own)) {
                            Err(SimbalError::Overflow { .. }) if !is_f64::<B::Elem>() => {}
                            Ok(v) if is_f64::<B::Elem>() => {
                                let dz = down(router.backend(), router.dz().unwrap()).unwrap();
                                assert!(finite(&run::loss_array(&v)), "{tag}: z-loss values {v:?}");
                                assert!(finite(&dz), "{tag}: z-loss dZ {dz:?}");
                            }
                            other => panic!(
                                "{tag}: z-loss of 1e30 logits in {} gave {other:?}",
                                B::Elem::NAME
                            ),
                        }
                    }
                }
            }
        }
    }
}

/// Forward on designed logits through `forward_logits`; returns (indices, dropped, gates).
fn route_logits<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    cfg: RouterConfig,
    z: &[f64],
    bias: Option<&[f64]>,
) -> (Vec<u32>, Vec<u32>, Vec<f64>, Vec<u32>) {
    let b = fresh(make);
    let zb = up(&b, z).expect("upload");
    let bb = bias.map(|v| up(&b, v).expect("upload"));
    let n = z.len() / cfg.experts;
    let mut router = Router::new(b, cfg).expect("Router::new");
    router
        .forward_logits(&zb, bb.as_ref(), n)
        .unwrap_or_else(|err| panic!("forward_logits {cfg:?}: {err:?}"));
    let f = run::read_forward(&router).expect("read");
    (f.idx, f.dropped, f.gates, f.order)
}

/// Ties go to the lower index: in the top-k (softmax and sigmoid, with and without a selection
/// bias), in group admission, and among equal gates under capacity (lower token index kept).
pub fn ties<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "invariants::ties";
    if acquire(make, NAME).is_none() {
        return;
    }
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        let cfg = |e, k| RouterConfig::new(e, k).with_score(score);
        let tag = format!("{NAME} ({score:?})");
        // All equal.
        let (idx, ..) = route_logits(make, cfg(5, 3), &[0.5; 5], None);
        assert_eq!(idx, vec![0, 1, 2], "{tag}: all-equal logits");
        // Partial ties.
        let z = [1.0, 3.0, 3.0, 1.0, 3.0];
        assert_eq!(
            route_logits(make, cfg(5, 2), &z, None).0,
            vec![1, 2],
            "{tag}: [1,3,3,1,3] k=2"
        );
        assert_eq!(
            route_logits(make, cfg(5, 4), &z, None).0,
            vec![1, 2, 4, 0],
            "{tag}: [1,3,3,1,3] k=4"
        );
        assert_eq!(
            route_logits(make, cfg(5, 5), &z, None).0,
            vec![1, 2, 4, 0, 3],
            "{tag}: k=E"
        );
        // Ties created by the selection bias (exactly representable values).
        let z = [0.0, 0.0, 0.0, 0.0];
        let bias = [0.25, 0.5, 0.5, 0.25];
        assert_eq!(
            route_logits(make, cfg(4, 3), &z, Some(&bias)).0,
            vec![1, 2, 0],
            "{tag}: bias ties"
        );
        // Group admission: equal group scores admit the lower group.
        let gcfg = cfg(4, 1).with_groups(2, 1);
        assert_eq!(
            route_logits(make, gcfg, &[0.0, 1.0, 1.0, 0.0], None).0,
            vec![1],
            "{tag}: group tie"
        );
        assert_eq!(
            route_logits(make, gcfg, &[0.0; 4], None).0,
            vec![0],
            "{tag}: all-equal groups"
        );
        let gcfg = cfg(6, 2).with_groups(3, 2);
        assert_eq!(
            route_logits(make, gcfg, &[0.0, 2.0, 2.0, 0.0, 2.0, 0.0], None).0,
            vec![1, 2],
            "{tag}: three-way group tie"
        );
        // Capacity: identical tokens, equal gates; the lower token indices are kept.
        for policy in [DropPolicy::Probs, DropPolicy::Position] {
            let ccfg = cfg(2, 1).with_capacity(0.5, policy); // C = ceil(0.5 * 4 / 2) = 1
            let (idx, dropped, gates, order) =
                route_logits(make, ccfg, &[1.0, 0.0].repeat(4), None);
            assert_eq!(idx, vec![0; 4], "{tag} {policy:?}: capacity tie indices");
            assert_eq!(
                dropped,
                vec![0, 1, 1, 1],
                "{tag} {policy:?}: capacity tie drops"
            );
            assert_eq!(
                order,
                vec![0],
                "{tag} {policy:?}: capacity tie dispatch order"
            );
            assert!(
                gates[0] > 0.0 && gates[1..].iter().all(|&g| g == 0.0),
                "{tag}: gates {gates:?}"
            );
        }
        // Probs keeps the larger gates, Position the earlier tokens.
        let z = [0.0, -1.0, 2.0, -1.0, 1.0, -1.0, 3.0, -1.0];
        let c = cfg(2, 1).with_renormalize(false);
        let (_, dropped, ..) =
            route_logits(make, c.with_capacity(0.5, DropPolicy::Probs), &z, None);
        assert_eq!(
            dropped,
            vec![1, 1, 1, 0],
            "{tag}: Probs keeps the largest gate"
        );
        let (_, dropped, ..) =
            route_logits(make, c.with_capacity(0.5, DropPolicy::Position), &z, None);
        assert_eq!(
            dropped,
            vec![0, 1, 1, 1],
            "{tag}: Position keeps the first token"
        );
    }
}
