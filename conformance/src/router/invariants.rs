//! The router's SPEC invariants, on the backend itself (tolerance `B::Elem::CONFORMANCE_TOL`
//! relative to the output's scale): score and gate normalisation, no gradient through dropped
//! assignments, huge logits staying finite, and ties to the lower index.

use crate::harness::compare::backward_close;
use crate::harness::gen::{self, Case, LossSet};
use crate::harness::run;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::view;
use simbal_core::{
    Backend, DropPolicy, LblConfig, LblLevel, LossConfig, Rng, Router, RouterConfig, RoutingStats,
    Scalar, ScoreFn, SimbalError, ZLossConfig,
};

/// Softmax rows sum to 1; sigmoid scores lie in [0, 1]; gates are `s p_i` or, renormalised,
/// `s p_i / sum_l p_l` of the chosen experts (so they sum to `s`), whatever the selection bias.
pub fn score_and_gate_normalisation<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::invariants::score_and_gate_normalisation";
    if acquire(make, NAME).is_none() {
        return;
    }
    let tol = B::Elem::CONFORMANCE_TOL;
    // Without capacity: nothing dropped, so every gate is as the scores give it.
    let strategy = gen::case(gen::SMALL, LossSet::NoSimBal).prop_map(|case| Case {
        cfg: RouterConfig {
            capacity: None,
            ..case.cfg
        },
        ..case
    });
    run_prop(NAME, 48, strategy, |case| {
        let cfg = case.cfg;
        let f = run::with_pass(make, cfg, &case.data(), |io, _, pass| {
            run::read_forward(io, &pass).ctx("read")
        })?;
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
                ScoreFn::SqrtSoftplus => ensure(pr.iter().all(|&v| v >= 0.0), || {
                    format!("sqrt-softplus scores below 0: {pr:?}")
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
    const NAME: &str = "router::invariants::dropped_get_no_gradient";
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
                        level: LblLevel::sequences(4),
                        ..l
                    },
                    _ => l,
                }),
                ..case.losses
            },
            ..case
        };
        let data = case.data();
        run::with_pass(make, cfg, &data, |io, inp, mut pass| {
            let f = run::read_forward(io, &pass).ctx("read")?;
            let g = pass
                .backward(inp.dw(), &case.losses, case.global(&data))
                .ctx("backward")?;
            let first = run::read_backward(io, &g).ctx("read")?;
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
            let dwb = up(io, &dw).ctx("upload")?;
            // The same pass again, with another gate gradient.
            let g = pass
                .backward(view::<B>(&dwb), &case.losses, case.global(&data))
                .ctx("backward")?;
            let second = run::read_backward(io, &g).ctx("read")?;
            backward_close("dW changed at dropped slots:", &second, &first, tol)
        })
    });
}

/// Logits of magnitude 1e30 stay finite in every precision: scores and gates of
/// `forward_logits`, `dZ` and the loss values of its backward without z-loss. With z-loss,
/// `lse^2 ~ 1e60` overflows `f32`: that must be `Err(Overflow)`, never an inf/NaN value; in `f64`
/// it is finite.
pub fn huge_logits_stay_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::invariants::huge_logits_stay_finite";
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
                    let io = fresh(make);
                    let zb = up(&io, &z).expect("upload");
                    let dwb = up(&io, &dw).expect("upload");
                    let mut router = Router::new(fresh(make), cfg).expect("Router::new");
                    let mut pass = router
                        .forward_logits(view::<B>(&zb), None)
                        .unwrap_or_else(|err| panic!("{tag}: forward_logits: {err:?}"));
                    let f = run::read_forward(&io, &pass).expect("read");
                    assert!(finite(&f.p), "{tag}: scores {:?}", f.p);
                    assert!(finite(&f.gates), "{tag}: gates {:?}", f.gates);
                    let mut own = RoutingStats::default();
                    pass.stats_into(&mut own).expect("stats");
                    assert!(finite(&own.score_sums), "{tag}: stats {own:?}");
                    let dwv = view::<B>(&dwb);
                    for lbl in [None, Some(LblConfig::default())] {
                        let mut losses = LossConfig::none();
                        losses.lbl = lbl;
                        let g = pass
                            .backward(dwv, &losses, Some(&own))
                            .unwrap_or_else(|err| {
                                panic!("{tag} {losses:?}: backward from logits: {err:?}")
                            });
                        let dz = down(&io, g.dz).unwrap();
                        assert!(finite(&dz), "{tag} {losses:?}: dZ {dz:?}");
                        let v = g.losses;
                        assert!(finite(&run::loss_array(&v)), "{tag}: losses {v:?}");
                        let losses = losses.with_z_loss(ZLossConfig::default());
                        match pass.backward(dwv, &losses, Some(&own)) {
                            Err(SimbalError::Overflow { .. }) if !is_f64::<B::Elem>() => {}
                            Ok(g) if is_f64::<B::Elem>() => {
                                let dz = down(&io, g.dz).unwrap();
                                let v = g.losses;
                                assert!(finite(&run::loss_array(&v)), "{tag}: z-loss values {v:?}");
                                assert!(finite(&dz), "{tag}: z-loss dZ {dz:?}");
                            }
                            other => panic!(
                                "{tag}: z-loss of 1e30 logits in {} gave {:?}",
                                B::Elem::NAME,
                                other.map(|g| g.losses)
                            ),
                        }
                    }
                    let h = router.routing_entropy().expect("entropy").to_f64_lossy();
                    assert!(h.is_finite(), "{tag}: routing entropy {h}");
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
    let io = fresh(make);
    let zb = up(&io, z).expect("upload");
    let bb = up_opt(&io, bias).expect("upload");
    let mut router = Router::new(fresh(make), cfg).expect("Router::new");
    let pass = router
        .forward_logits(view::<B>(&zb), opt_view::<B>(&bb))
        .unwrap_or_else(|err| panic!("forward_logits {cfg:?}: {err:?}"));
    let f = run::read_forward(&io, &pass).expect("read");
    (f.idx, f.dropped, f.gates, f.order)
}

/// Ties go to the lower index: in the top-k (softmax and sigmoid, with and without a selection
/// bias), in group admission, and among equal gates under capacity (lower token index kept).
pub fn ties<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::invariants::ties";
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
        for (policy, want, keeps) in [
            (DropPolicy::Probs, [1, 1, 1, 0], "the largest gate"),
            (DropPolicy::Position, [0, 1, 1, 1], "the first token"),
        ] {
            let (_, dropped, ..) = route_logits(make, c.with_capacity(0.5, policy), &z, None);
            assert_eq!(dropped, want, "{tag}: {policy:?} keeps {keeps}");
        }
    }
}
