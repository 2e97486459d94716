//! `MoeRouter` on burn tensors against core's reference router (f64), on any autodiff backend:
//! the routing tensors, the loss values and tensors, and `X`'s and `R`'s gradients
//! from `loss.backward()` (the gates' upstream gradient plus every loss tensor) at the SPEC's
//! tolerance, for every convention the router takes (scores, bias, capacity, groups, mask,
//! sequence layouts with packed offsets, global-batch statistics, every loss).

use super::{bools, float, host, host_int, ints, max_rel, normal};
use burn::tensor::backend::AutodiffBackend;
use simbal_burn::{MoeRouter, SimbalBackend, TensorBatch};
use simbal_core::{
    orthogonal_init, Batch, DropPolicy, LblConfig, LblCounts, LblLevel, LossConfig, Reference,
    Router, RouterConfig, RoutingStats, ScoreFn, SeqLayout, SimBalConfig, SimBalNorm, WeightLayout,
    ZLossConfig,
};

/// One case: a configuration, losses, and what the batch carries.
struct Case {
    name: &'static str,
    cfg: RouterConfig,
    losses: LossConfig,
    bias: bool,
    mask: bool,
    offsets: Option<Vec<u32>>,
    global: bool,
}

fn case(name: &'static str, cfg: RouterConfig, losses: LossConfig) -> Case {
    Case {
        name,
        cfg,
        losses,
        bias: false,
        mask: false,
        offsets: None,
        global: false,
    }
}

const N: usize = 24;
const D: usize = 12;
const E: usize = 8;

fn cases() -> Vec<Case> {
    let all = LossConfig::simbal()
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default());
    let seq = |layout| LblConfig {
        level: LblLevel::Sequence(layout),
        ..LblConfig::default()
    };
    vec![
        case("softmax top-2, every loss", RouterConfig::new(E, 2), all),
        Case {
            bias: true,
            ..case(
                "sigmoid top-2, bias, normalised LBL counting dispatched",
                RouterConfig::new(E, 2)
                    .with_score(ScoreFn::Sigmoid)
                    .with_scale(2.5),
                LossConfig::none().with_lbl(LblConfig {
                    counts: LblCounts::Dispatched,
                    ..LblConfig::default()
                }),
            )
        },
        case(
            "capacity with drops, groups, ExD weight, scale-free SimBal",
            RouterConfig::new(E, 2)
                .with_capacity(0.6, DropPolicy::Probs)
                .with_groups(4, 2)
                .with_layout(WeightLayout::ExD),
            LossConfig::none()
                .with_simbal(SimBalConfig {
                    lambda: 0.3,
                    norm: SimBalNorm::ScaleFree,
                })
                .with_lbl(LblConfig::default()),
        ),
        Case {
            mask: true,
            ..case(
                "token mask, LBL per [S, B] sequence, z-loss",
                RouterConfig::new(E, 1),
                LossConfig::none()
                    .with_lbl(seq(SeqLayout::SequenceMajor { batch: 4 }))
                    .with_z_loss(ZLossConfig { beta: 0.01 }),
            )
        },
        Case {
            mask: true,
            offsets: Some(vec![0, 5, 6, 17, 24]),
            ..case(
                "packed sequences with a mask, sqrt-softplus",
                RouterConfig::new(E, 3).with_score(ScoreFn::SqrtSoftplus),
                LossConfig::none().with_lbl(seq(SeqLayout::Packed)),
            )
        },
        Case {
            global: true,
            ..case(
                "global-batch LBL from merged statistics",
                RouterConfig::new(E, 2),
                LossConfig::simbal().with_lbl(LblConfig {
                    level: LblLevel::GlobalBatch,
                    ..LblConfig::default()
                }),
            )
        },
    ]
}

/// What both routers are given.
struct Inputs {
    x: Vec<f64>,
    r: Vec<f64>,
    dw: Vec<f64>,
    bias: Vec<f64>,
    mask: Vec<bool>,
    global: RoutingStats,
}

fn inputs(c: &Case, seed: u64) -> Inputs {
    let mut rng = simbal_core::Rng::new(seed);
    let r: Vec<f64> = orthogonal_init(c.cfg.layout, D, E, seed).unwrap();
    // Off orthogonality, so SimBal has a gradient; away from G = 0 kinks by the random draw.
    let r = r.iter().map(|v| v * 1.3 + rng.normal() * 0.05).collect();
    let mut global = RoutingStats::empty(E);
    global.tokens = 3 * N as u64;
    global.routed_counts = (0..E as u64).map(|e| 2 * N as u64 / E as u64 + e).collect();
    global.counts = global.routed_counts.clone();
    Inputs {
        x: normal(&mut rng, N * D, 1.0),
        r,
        dw: normal(&mut rng, N * c.cfg.k, 1.0),
        bias: normal(&mut rng, E, 0.05),
        mask: (0..N).map(|t| t % 5 != 3).collect(),
        global,
    }
}

/// The reference: routing, loss values, `dX`, `dR` (f64).
struct Expected {
    indices: Vec<u32>,
    gates: Vec<f64>,
    counts: Vec<u32>,
    dropped: Vec<u32>,
    values: [f64; 3],
    dx: Vec<f64>,
    dr: Vec<f64>,
}

fn expected(c: &Case, inp: &Inputs) -> Expected {
    let mut router = Router::new(Reference::<f64>::new(), c.cfg).unwrap();
    let mask: Vec<u32> = inp.mask.iter().map(|&v| u32::from(v)).collect();
    let mut batch = Batch::<Reference<f64>>::new();
    if c.bias {
        batch = batch.bias(&inp.bias);
    }
    if c.mask {
        batch = batch.mask(&mask);
    }
    if let Some(o) = &c.offsets {
        batch = batch.offsets(o);
    }
    let mut pass = router.forward_batch(&inp.x, &inp.r, batch).unwrap();
    let (indices, gates) = (pass.indices().to_vec(), pass.gates().to_vec());
    let (counts, dropped) = (pass.counts().to_vec(), pass.dropped().to_vec());
    let global = c.global.then_some(&inp.global);
    let g = pass.backward(&inp.dw, &c.losses, global).unwrap();
    Expected {
        indices,
        gates,
        counts,
        dropped,
        values: [g.losses.simbal, g.losses.lbl, g.losses.z_loss],
        dx: g.dx.to_vec(),
        dr: g.dr.to_vec(),
    }
}

/// Every case on `B` against the reference at `tol`.
pub fn agree<B: SimbalBackend + AutodiffBackend>(tol: f64) {
    for (i, c) in cases().iter().enumerate() {
        let inp = inputs(c, 11 + i as u64);
        let want = expected(c, &inp);
        let rshape = match c.cfg.layout {
            WeightLayout::DxE => [D, E],
            WeightLayout::ExD => [E, D],
        };
        let x = float::<B, 2>(&inp.x, [N, D]).require_grad();
        let r = float::<B, 2>(&inp.r, rshape).require_grad();
        let mut batch = TensorBatch::new();
        if c.bias {
            batch = batch.bias(float::<B, 1>(&inp.bias, [E]));
        }
        if c.mask {
            batch = batch.mask(bools::<B>(&inp.mask));
        }
        if let Some(o) = &c.offsets {
            let o: Vec<i64> = o.iter().map(|&v| i64::from(v)).collect();
            batch = batch.offsets(ints::<B>(&o));
        }
        let router = MoeRouter::<B>::new(c.cfg, &Default::default()).unwrap();
        let global = c.global.then_some(&inp.global);
        let out = router
            .forward_batch(x.clone(), r.clone(), batch, &c.losses, global)
            .unwrap();
        let name = c.name;
        let as_u32 = |v: Vec<i64>| v.into_iter().map(|i| i as u32).collect::<Vec<_>>();
        assert_eq!(
            as_u32(host_int(&out.indices)),
            want.indices,
            "{name}: indices"
        );
        assert_eq!(as_u32(host_int(&out.counts)), want.counts, "{name}: counts");
        let dropped = host_int(&out.dropped.clone().int());
        assert_eq!(as_u32(dropped), want.dropped, "{name}: dropped");
        assert!(
            max_rel(&host(&out.gates), &want.gates) <= tol,
            "{name}: gates"
        );
        let values = [&out.losses.simbal, &out.losses.lbl, &out.losses.z_loss];
        for (j, t) in values.into_iter().enumerate() {
            let v = host(t)[0];
            assert!(
                max_rel(&[v], &[want.values[j]]) <= tol,
                "{name}: loss {j}: {v}"
            );
            let hv = [out.values.simbal, out.values.lbl, out.values.z_loss][j];
            assert!(
                max_rel(&[hv], &[want.values[j]]) <= tol,
                "{name}: host value {j}"
            );
        }
        let dw = float::<B, 2>(&inp.dw, [N, c.cfg.k]);
        let objective = (out.gates * dw).sum() + out.losses.total();
        let grads = objective.backward();
        let dx = x.grad(&grads).unwrap();
        let dr = r.grad(&grads).unwrap();
        assert!(max_rel(&host(&dx), &want.dx) <= tol, "{name}: dX");
        assert!(max_rel(&host(&dr), &want.dr) <= tol, "{name}: dR");
        assert!(router.take_error().unwrap().is_none(), "{name}: error");
    }
}
