//! Random router cases: shapes (N = 1, k = E, E = 1 and D < E all drawn often), router
//! configurations (score, renormalisation, scale, groups, capacity with both policies, both
//! layouts, selection bias) and loss configurations (every SimBal norm, LBL at every level with
//! both normalisations, z-loss), plus the data of a case drawn from its seed. The field's
//! conventions are drawn too: sqrt-softplus scores, a minimum capacity, LBL scores normalised
//! or raw, counts routed or dispatched, every sequence layout (packed offsets drawn with the
//! data), and a token mask (sometimes masking every token).

use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::{
    Capacity, DropPolicy, GroupLimit, LblConfig, LblCounts, LblLevel, LblNormalization, LblScores,
    LossConfig, Rng, RouterConfig, RoutingStats, ScoreFn, SeqLayout, SimBalConfig, SimBalNorm,
    WeightLayout, ZLossConfig,
};

/// Upper bounds of the random shapes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `N`.
    pub n: usize,
    /// Largest `D`.
    pub d: usize,
    /// Largest `E`.
    pub e: usize,
}

/// Small shapes: the default of every property.
pub const SMALL: Limits = Limits { n: 6, d: 5, e: 8 };

/// Which losses a case may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossSet {
    /// Any combination, SimBal included (ops on tokens and weight).
    All,
    /// LBL and z-loss only (the logits path refuses SimBal).
    NoSimBal,
}

/// One random router case; its data come from `seed` (see [`Case::data`]).
#[derive(Debug, Clone)]
pub struct Case {
    /// Tokens.
    pub n: usize,
    /// Model width.
    pub d: usize,
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Router configuration (validated by construction).
    pub cfg: RouterConfig,
    /// Losses of the backward pass.
    pub losses: LossConfig,
    /// Whether a selection bias is passed.
    pub bias: bool,
    /// Whether a token mask is passed (drawn with the data).
    pub mask: bool,
    /// Seed of the data.
    pub seed: u64,
}

/// The data of a case, in `f64` (round with [`crate::harness::util::rounded`] for the backend's type).
#[derive(Debug, Clone)]
pub struct Data {
    /// Tokens `N x D`, `N(0, 1)`.
    pub x: Vec<f64>,
    /// Router weight `D x E` in the case's layout, `N(0, 0.7^2)`.
    pub r: Vec<f64>,
    /// Logits `N x E` for the logits path, `N(0, 1.5^2)`.
    pub z: Vec<f64>,
    /// Gate gradient `N x k`, `N(0, 1)`.
    pub dw: Vec<f64>,
    /// Selection bias `E`, `N(0, 0.2^2)`, when the case has one.
    pub bias: Option<Vec<f64>>,
    /// Merged statistics for global-batch LBL (another shard's counts; carries no gradient).
    pub global: RoutingStats,
    /// Token mask `N` (about a third masked; every token masked one case in eight), when the
    /// case has one.
    pub mask: Option<Vec<u32>>,
    /// Packed-sequence offsets (a random partition of `N`) for a packed sequence layout.
    pub offsets: Option<Vec<u32>>,
}

impl Case {
    /// Draws the case's data from its seed.
    pub fn data(&self) -> Data {
        let (n, d, e, k) = (self.n, self.d, self.e, self.k);
        let mut rng = Rng::new(self.seed);
        let mut normal = |len: usize, std: f64| {
            let mut v = vec![0.0f64; len];
            rng.fill_normal(std, &mut v);
            v
        };
        let x = normal(n * d, 1.0);
        let r = normal(d * e, 0.7);
        let z = normal(n * e, 1.5);
        let dw = normal(n * k, 1.0);
        let bias = self.bias.then(|| normal(e, 0.2));
        let mut rng = Rng::new(self.seed ^ 0x5eed);
        let counts: Vec<u64> = (0..e).map(|_| rng.below(3 * n + 1) as u64).collect();
        let routed_counts: Vec<u64> = (0..e).map(|_| rng.below(3 * n + 1) as u64).collect();
        let global = RoutingStats {
            counts,
            routed_counts,
            score_sums: vec![0.0; e],
            tokens: (n + rng.below(2 * n + 1)) as u64,
            dropped: 0,
        };
        let mask = self.mask.then(|| {
            let all = rng.below(8) == 0;
            (0..n)
                .map(|_| u32::from(!all && rng.below(3) != 0))
                .collect()
        });
        let packed = matches!(
            self.losses.lbl.map(|l| l.level),
            Some(LblLevel::Sequence(SeqLayout::Packed))
        );
        let offsets = packed.then(|| {
            let mut o = vec![0u32];
            for t in 1..n {
                if rng.below(3) == 0 {
                    o.push(t as u32);
                }
            }
            o.push(n as u32);
            o
        });
        Data {
            x,
            r,
            z,
            dw,
            bias,
            global,
            mask,
            offsets,
        }
    }

    /// The global statistics when the losses need them.
    pub fn global<'a>(&self, data: &'a Data) -> Option<&'a RoutingStats> {
        match self.losses.lbl {
            Some(LblConfig {
                level: LblLevel::GlobalBatch,
                ..
            }) => Some(&data.global),
            _ => None,
        }
    }
}

/// Divisors of `n` (all of them, `1` and `n` included).
pub fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|s| n % s == 0).collect()
}

/// Every valid group limit for `e` experts and `k` per token (`None` included), each with
/// `top_groups < groups` or `= groups`.
pub fn group_options(e: usize, k: usize) -> Vec<Option<GroupLimit>> {
    let mut out = vec![None];
    for groups in divisors(e).into_iter().filter(|&g| g >= 2) {
        for top_groups in 1..=groups {
            if top_groups * (e / groups) >= k {
                out.push(Some(GroupLimit { groups, top_groups }));
            }
        }
    }
    out
}

fn score() -> impl Strategy<Value = ScoreFn> {
    prop_oneof![
        2 => Just(ScoreFn::Softmax),
        2 => Just(ScoreFn::Sigmoid),
        1 => Just(ScoreFn::SqrtSoftplus)
    ]
}

fn layout() -> impl Strategy<Value = WeightLayout> {
    prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)]
}

fn capacity() -> impl Strategy<Value = Option<Capacity>> {
    prop_oneof![
        2 => Just(None),
        1 => (
            select(vec![0.5, 0.75, 1.0, 1.5]),
            prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
            select(vec![0usize, 0, 2]),
        )
            .prop_map(|(factor, policy, min)| Some(Capacity {
                factor,
                policy,
                min
            })),
    ]
}

/// A SimBal configuration of any norm.
pub fn simbal_config() -> impl Strategy<Value = SimBalConfig> {
    (
        prop_oneof![
            Just(SimBalNorm::L1),
            Just(SimBalNorm::FrobeniusSq),
            Just(SimBalNorm::ScaleFree)
        ],
        select(vec![0.1, 0.3, 1.0]),
    )
        .prop_map(|(norm, lambda)| SimBalConfig { lambda, norm })
}

/// Every sequence layout of `n` tokens.
pub fn seq_layout(n: usize) -> impl Strategy<Value = SeqLayout> {
    prop_oneof![
        2 => select(divisors(n)).prop_map(|seq_len| SeqLayout::BatchMajor { seq_len }),
        1 => select(divisors(n)).prop_map(|batch| SeqLayout::SequenceMajor { batch }),
        1 => Just(SeqLayout::Packed),
    ]
}

fn lbl_config(n: usize) -> impl Strategy<Value = LblConfig> {
    let level = prop_oneof![
        Just(LblLevel::MicroBatch),
        seq_layout(n).prop_map(LblLevel::Sequence),
        Just(LblLevel::GlobalBatch),
    ];
    (
        select(vec![0.01, 0.1, 1.0]),
        level,
        prop_oneof![
            Just(LblNormalization::Switch),
            Just(LblNormalization::HuggingFace)
        ],
        prop_oneof![3 => Just(LblScores::Normalized), 1 => Just(LblScores::Raw)],
        prop_oneof![3 => Just(LblCounts::Routed), 1 => Just(LblCounts::Dispatched)],
        select(vec![1.0, 1.0, 6.0]),
    )
        .prop_map(
            |(alpha, level, normalization, scores, counts, shard_factor)| LblConfig {
                alpha,
                level,
                normalization,
                scores,
                counts,
                shard_factor,
            },
        )
}

fn losses(n: usize, set: LossSet) -> impl Strategy<Value = LossConfig> {
    let simbal = match set {
        LossSet::All => prop::option::weighted(0.6, simbal_config()).boxed(),
        LossSet::NoSimBal => Just(None).boxed(),
    };
    (
        simbal,
        prop::option::weighted(0.6, lbl_config(n)),
        prop::option::weighted(
            0.5,
            select(vec![1e-3, 0.1]).prop_map(|beta| ZLossConfig { beta }),
        ),
    )
        .prop_map(|(simbal, lbl, z_loss)| LossConfig {
            simbal,
            lbl,
            z_loss,
        })
}

/// Shapes `(n, d, e, k)` within `lim`, drawing `N = 1`, `E = 1` and `k = E` often.
pub fn shape(lim: Limits) -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (
        prop_oneof![1 => Just(1usize), 3 => 1..=lim.n],
        1..=lim.d,
        prop_oneof![1 => Just(1usize), 4 => 1..=lim.e],
    )
        .prop_flat_map(|(n, d, e)| {
            (
                Just(n),
                Just(d),
                Just(e),
                prop_oneof![1 => Just(e), 2 => 1..=e],
            )
        })
}

/// A router configuration for `e` experts and `k` per token.
pub fn router_config(e: usize, k: usize) -> impl Strategy<Value = RouterConfig> {
    (
        select(group_options(e, k)),
        score(),
        any::<bool>(),
        select(vec![1.0, 2.5, 0.5]),
        capacity(),
        layout(),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            move |(groups, score, renormalize, scale, capacity, layout, sinkhorn)| RouterConfig {
                experts: e,
                k,
                score,
                renormalize,
                scale,
                groups,
                capacity,
                layout,
                // Sinkhorn selection (no group limit), with a small cap: every backend runs it
                // through core's rows, so the cases agree exactly.
                selection: if sinkhorn && groups.is_none() {
                    simbal_core::Selection::Sinkhorn {
                        tol: 1e-4,
                        max_iters: 30,
                    }
                } else {
                    simbal_core::Selection::TopK
                },
                check_finite: true,
            },
        )
}

/// A full random case.
pub fn case(lim: Limits, set: LossSet) -> impl Strategy<Value = Case> {
    shape(lim).prop_flat_map(move |(n, d, e, k)| {
        (
            router_config(e, k),
            losses(n, set),
            any::<bool>(),
            prop::bool::weighted(0.3),
            any::<u64>(),
        )
            .prop_map(move |(cfg, losses, bias, mask, seed)| Case {
                n,
                d,
                e,
                k,
                cfg,
                losses,
                // No selection bias with Sinkhorn selection (refused).
                bias: bias && cfg.selection == simbal_core::Selection::TopK,
                mask,
                seed,
            })
    })
}

/// A case that always has the rarer features: a group limit that excludes groups, a tight
/// capacity (factor 0.5 or 0.75, both policies, so assignments are dropped), SimBal L1 (the
/// paper's loss, kinked at `G_ab = 0`), on `E` = 4 or 6 experts.
pub fn hard_case(set: LossSet) -> impl Strategy<Value = Case> {
    (2..=5usize, 1..=4usize, select(vec![4usize, 6]), 1..=2usize).prop_flat_map(
        move |(n, d, e, k)| {
            let groups: Vec<GroupLimit> = group_options(e, k)
                .into_iter()
                .flatten()
                .filter(|g| g.top_groups < g.groups)
                .collect();
            (
                (
                    select(groups),
                    score(),
                    any::<bool>(),
                    select(vec![1.0, 2.5]),
                    layout(),
                ),
                (
                    select(vec![0.5, 0.75]),
                    prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
                ),
                losses(n, LossSet::NoSimBal),
                (any::<bool>(), any::<bool>(), any::<u64>()),
            )
                .prop_map(
                    move |(
                        (g, score, renormalize, scale, layout),
                        (factor, policy),
                        losses,
                        (bias, mask, seed),
                    )| {
                        let simbal = (set == LossSet::All).then_some(SimBalConfig {
                            lambda: 0.1,
                            norm: SimBalNorm::L1,
                        });
                        Case {
                            n,
                            d,
                            e,
                            k,
                            cfg: RouterConfig {
                                experts: e,
                                k,
                                score,
                                renormalize,
                                scale,
                                groups: Some(g),
                                capacity: Some(Capacity {
                                    factor,
                                    policy,
                                    min: 0,
                                }),
                                layout,
                                selection: simbal_core::Selection::TopK,
                                check_finite: true,
                            },
                            losses: LossConfig { simbal, ..losses },
                            bias,
                            mask,
                            seed,
                        }
                    },
                )
        },
    )
}

/// A random `E x E`-sized weight case for SimBal: `(d, e, seed)`, `D < E` drawn often.
pub fn weight_shape() -> impl Strategy<Value = (usize, usize, u64)> {
    (1..=7usize, 1..=7usize, any::<u64>())
}

/// `len` samples of `N(0, std^2)` from `rng`.
pub fn normal(rng: &mut Rng, len: usize, std: f64) -> Vec<f64> {
    let mut v = vec![0.0; len];
    rng.fill_normal(std, &mut v);
    v
}
