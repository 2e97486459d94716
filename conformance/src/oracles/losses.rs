//! The losses and the bias update against Megatron-Core and HF: micro-batch LBL (softmax and
//! normalised sigmoid, with and without a token mask), sequence LBL on Megatron's `[S, B]` rows,
//! z-loss, `get_updated_expert_bias`, HF's `load_balancing_loss_func` (with `attention_mask`).
//! The departures of the oracles (all-masked NaN, Megatron's one count for uneven sequences) and
//! the LBL counts options are in [`super::masked`].

use super::fixture::{each, near, near1, ok, tol, Fx};
use super::{BIAS, HF_LBL, HF_MASKED_LBL, MASKED_LBL, MASKED_Z_LOSS, SEQ_LBL, SIGMOID_LBL};
use super::{SWITCH_LBL, Z_LOSS};
use crate::harness::util::*;
use simbal_core::memory::{idx_view, view, view_mut};
use simbal_core::{
    update_bias, Backend, Batch, BiasUpdateConfig, LblConfig, LblLevel, LblNormalization,
    LossConfig, Router, RouterConfig, RoutingStats, ScoreFn, SeqLayout, ZLossConfig,
};

/// `pub fn $name<B: Backend>(make)`: the check `$on` on each fixture of `$list`, with a token
/// mask iff `$masked`, named `oracles::$name`.
macro_rules! oracle_fns {
    ($($(#[$doc:meta])* $name:ident => $on:ident($list:ident, $masked:literal);)*) => {$(
        $(#[$doc])*
        pub fn $name<B: Backend>(make: &dyn Fn() -> Option<B>) {
            let name = concat!("oracles::", stringify!($name));
            each(make, name, $list, |io, f| $on(make, io, f, $masked));
        }
    )*};
}

/// What one pass from logits with `dW = 0` gave: the statistics of its valid tokens, the loss
/// values and `dZ`.
pub(super) struct Run {
    pub stats: RoutingStats,
    /// `(lbl, z_loss)`.
    pub losses: [f64; 2],
    pub dz: Vec<f64>,
}

/// One pass of a router of `cfg` from `z` (`n x e`) with the token `mask` (1 = valid) and the
/// selection `bias`, then the backward of `losses` with `dW = 0`.
pub(super) fn run<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    io: &B,
    z: &[f64],
    cfg: RouterConfig,
    mask: Option<&[u32]>,
    bias: Option<&[f64]>,
    losses: &LossConfig,
) -> Run {
    let n = z.len() / cfg.experts;
    let zb = ok("upload", up(io, z));
    let dw = ok("upload", up(io, &vec![0.0; n * cfg.k]));
    let mask = mask.map(|m| ok("idx_upload", io.idx_upload(m)));
    let bias = bias.map(|b| ok("upload", up(io, b)));
    let mut router = ok("Router::new", Router::new(fresh(make), cfg));
    let batch = Batch {
        bias: bias.as_ref().map(view::<B>),
        mask: mask.as_ref().map(idx_view::<B>),
        offsets: None,
    };
    let mut pass = ok(
        "forward_logits_batch",
        router.forward_logits_batch(view::<B>(&zb), batch),
    );
    let stats = ok("stats", pass.stats());
    let g = ok("backward", pass.backward(view::<B>(&dw), losses, None));
    let back = ok("download", crate::harness::run::read_logit_backward(io, &g));
    Run {
        stats,
        losses: [back.losses[1], back.losses[2]],
        dz: back.dz,
    }
}

/// `run` on a Megatron fixture's `/inputs/logits` with its token mask `/inputs/valid`, which
/// it has iff `masked`, and no selection bias.
fn mc_run<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    io: &B,
    f: &Fx,
    masked: bool,
    cfg: RouterConfig,
    losses: &LossConfig,
) -> Run {
    let mask = mask_at(f, "/inputs/valid");
    assert_eq!(mask.is_some(), masked, "{}: masked", f.name);
    let z = f.data("/inputs/logits");
    run(make, io, &z, cfg, mask.as_deref(), None, losses)
}

/// The fixture's token mask at `ptr` (1 = valid), if it has one.
pub(super) fn mask_at(f: &Fx, ptr: &str) -> Option<Vec<u32>> {
    f.opt(ptr).map(|_| {
        f.data(ptr)
            .iter()
            .map(|&v| {
                assert!(v == 0.0 || v == 1.0, "{}: mask value {v}", f.name);
                v as u32
            })
            .collect()
    })
}

/// Megatron's `score_function` as simbal's router: softmax, or sigmoid (renormalised gates
/// for `k > 1`, which the LBL does not see: `dW = 0`).
pub(super) fn megatron_router(f: &Fx, e: usize, k: usize) -> RouterConfig {
    match f.str("/args/score_function") {
        "softmax" => RouterConfig::new(e, k),
        "sigmoid" => RouterConfig::new(e, k)
            .with_score(ScoreFn::Sigmoid)
            .with_renormalize(k > 1),
        s => panic!("{}: score function {s}", f.name),
    }
}

/// Integer data (counts) of the fixture at `ptr`.
pub(super) fn counts_at(f: &Fx, ptr: &str) -> Vec<u64> {
    f.data(ptr)
        .iter()
        .map(|&c| {
            assert!(c >= 0.0 && c.fract() == 0.0, "{}: count {c}", f.name);
            c as u64
        })
        .collect()
}

/// The fixture's loss value against `value` and its gradient against `dz`, each named in the
/// failure message.
pub(super) fn value_and_dz<B: Backend>(f: &Fx, value: (&str, f64), dz: (&str, &[f64], &[f64])) {
    let name = |what: &str| format!("{}: {what}", f.name);
    near1(
        &name(value.0),
        value.1,
        f.f64("/outputs/loss/value"),
        tol::<B>(),
    );
    near(&name(dz.0), dz.1, dz.2, tol::<B>());
}

/// [`value_and_dz`] with Megatron's gradient `/grads/d_loss_d_logits` as `dZ`.
fn mc_value_and_dz<B: Backend>(f: &Fx, what: &str, value: f64, dz: &[f64]) {
    value_and_dz::<B>(
        f,
        (what, value),
        ("dZ", dz, &f.data("/grads/d_loss_d_logits")),
    );
}

/// LBL alone with `alpha`, `level` and `normalization`, SPEC's default scores (normalised)
/// and counts (routed).
pub(super) fn lbl(alpha: f64, level: LblLevel, normalization: LblNormalization) -> LossConfig {
    LossConfig::none().with_lbl(LblConfig {
        alpha,
        level,
        normalization,
        ..LblConfig::default()
    })
}

/// Megatron's micro-batch aux loss (`switch_load_balancing_loss_func` as `TopKRouter.routing`
/// assembles it) on the fixture `f` (with a mask iff `masked`): LBL value and `dZ`; the
/// LBL counts (`routed_counts`, and the kept counts of this plain router) equal
/// `tokens_per_expert`, the valid tokens `total_num_tokens`, the score sums the column sums of
/// `scores_for_aux_loss` (masked rows zero there).
fn mc_lbl_on<B: Backend>(make: &dyn Fn() -> Option<B>, io: &B, f: Fx, masked: bool) {
    let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/topk"));
    let cfg = lbl(
        f.f64("/args/moe_aux_loss_coeff"),
        LblLevel::MicroBatch,
        LblNormalization::Switch,
    );
    let r = mc_run(make, io, &f, masked, megatron_router(&f, e, k), &cfg);
    let want = counts_at(&f, "/outputs/tokens_per_expert");
    assert_eq!(r.stats.routed_counts, want, "{}: routed counts", f.name);
    assert_eq!(r.stats.counts, want, "{}: kept counts", f.name);
    assert_eq!(
        r.stats.tokens as f64,
        f.f64("/outputs/total_num_tokens"),
        "{}: valid tokens",
        f.name
    );
    let q = f.data("/outputs/scores_for_aux_loss");
    let sums: Vec<f64> = (0..e).map(|j| q.iter().skip(j).step_by(e).sum()).collect();
    near(
        &format!("{}: score sums", f.name),
        &r.stats.score_sums,
        &sums,
        tol::<B>(),
    );
    mc_value_and_dz::<B>(&f, "LBL", r.losses[0], &r.dz);
}

oracle_fns! {
    /// Megatron's micro-batch aux loss, softmax, no mask.
    switch_lbl => mc_lbl_on(SWITCH_LBL, false);

    /// Megatron's micro-batch aux loss, sigmoid scores normalised per token (SPEC `Normalized`),
    /// no mask.
    sigmoid_lbl => mc_lbl_on(SIGMOID_LBL, false);

    /// Megatron's micro-batch aux loss with a padding mask (softmax and normalised sigmoid).
    masked_lbl => mc_lbl_on(MASKED_LBL, true);
}

/// Megatron's sequence aux loss (`TopKRouter._apply_seq_aux_loss`), softmax and normalised
/// sigmoid, no mask, on its `[S, B]` rows as they are (`SeqLayout::SequenceMajor`): value,
/// `dZ`, and the counts summed over the sequences.
pub fn seq_lbl<B: Backend>(make: &dyn Fn() -> Option<B>) {
    each(make, "oracles::seq_lbl", SEQ_LBL, |io, f| {
        assert!(f.opt("/inputs/valid_sb").is_none(), "{}: masked", f.name);
        let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/topk"));
        let (s, b) = (f.usize("/args/seq_length"), f.usize("/args/bsz"));
        assert_eq!(f.shape("/inputs/logits"), [s, b, e], "{}", f.name);
        let cfg = lbl(
            f.f64("/args/seq_aux_loss_coeff"),
            LblLevel::Sequence(SeqLayout::SequenceMajor { batch: b }),
            LblNormalization::Switch,
        );
        let z = f.data("/inputs/logits");
        let r = run(make, io, &z, megatron_router(&f, e, k), None, None, &cfg);
        assert_eq!(
            r.stats.routed_counts,
            seq_counts(&f, b, e),
            "{}: counts",
            f.name
        );
        mc_value_and_dz::<B>(&f, "sequence LBL", r.losses[0], &r.dz);
    });
}

/// `tokens_per_expert_per_seq` (`B x E`) summed over the sequences.
pub(super) fn seq_counts(f: &Fx, b: usize, e: usize) -> Vec<u64> {
    let per = counts_at(f, "/outputs/tokens_per_expert_per_seq");
    assert_eq!(per.len(), b * e, "{}: per-sequence counts", f.name);
    (0..e)
        .map(|j| (0..b).map(|bi| per[bi * e + j]).sum())
        .collect()
}

/// Megatron's `z_loss_func` on the fixture `f` (with a padding mask iff `masked`):
/// value and `dZ`.
fn z_loss_on<B: Backend>(make: &dyn Fn() -> Option<B>, io: &B, f: Fx, masked: bool) {
    let e = f.shape("/inputs/logits")[1];
    let cfg = LossConfig::none().with_z_loss(ZLossConfig {
        beta: f.f64("/args/z_loss_coeff"),
    });
    let r = mc_run(make, io, &f, masked, RouterConfig::new(e, 2), &cfg);
    mc_value_and_dz::<B>(&f, "z-loss", r.losses[1], &r.dz);
}

oracle_fns! {
    /// Megatron's `z_loss_func`, no mask.
    z_loss => z_loss_on(Z_LOSS, false);

    /// Megatron's `z_loss_func` with a padding mask (all masked included: loss 0, gradient 0, as
    /// Megatron's `clamp(min=1)` and the SPEC).
    masked_z_loss => z_loss_on(MASKED_Z_LOSS, true);
}

/// Megatron's `get_updated_expert_bias` (one rank): `update_bias`, not centred.
pub fn bias_update<B: Backend>(make: &dyn Fn() -> Option<B>) {
    each(make, "oracles::bias_update", BIAS, |io, f| {
        let counts = counts_at(&f, "/inputs/tokens_per_expert");
        let e = counts.len();
        let stats = RoutingStats {
            tokens: counts.iter().sum(),
            routed_counts: counts.clone(),
            counts,
            score_sums: vec![0.0; e],
            dropped: 0,
        };
        let cfg = BiasUpdateConfig {
            rate: f.f64("/args/expert_bias_update_rate"),
            centred: false,
        };
        let mut bias = ok("upload", up(io, &f.data("/inputs/expert_bias")));
        ok(
            "update_bias",
            update_bias(io, &cfg, &stats, view_mut::<B>(&mut bias)),
        );
        near(
            &format!("{}: updated bias", f.name),
            &ok("download", down(io, &bias)),
            &f.data("/outputs/updated_expert_bias"),
            tol::<B>(),
        );
    });
}

/// HF's pooled layers: the layers' `[B*S, E]` arrays at `{prefix}{l}` stacked into one.
pub(super) fn hf_stack(f: &Fx, prefix: &str) -> Vec<f64> {
    let (e, layers) = (f.usize("/args/num_experts"), f.usize("/args/num_layers"));
    let rows = f.usize("/args/batch_size") * f.usize("/args/seq_len");
    let mut v = Vec::new();
    for l in 0..layers {
        let d = f.data(&format!("{prefix}{l}"));
        assert_eq!(d.len(), rows * e, "{}: layer {l}", f.name);
        v.extend(d);
    }
    v
}

/// HF's `attention_mask` (`[B, S]`, batch-major as the rows), repeated for every layer.
pub(super) fn hf_mask(f: &Fx) -> Option<Vec<u32>> {
    let m = mask_at(f, "/inputs/attention_mask")?;
    let rows = f.usize("/args/batch_size") * f.usize("/args/seq_len");
    assert_eq!(m.len(), rows, "{}: attention_mask", f.name);
    Some(m.repeat(f.usize("/args/num_layers")))
}

/// HF transformers' `load_balancing_loss_func` on the fixture `f` (with an
/// `attention_mask` iff `masked`): the layers' logits stacked into one pass (HF pools their
/// counts and score sums), the mask repeated per layer, HuggingFace normalisation, `alpha = 1`:
/// value and each layer's `dZ` (zero on masked rows).
fn hf_lbl_on<B: Backend>(make: &dyn Fn() -> Option<B>, io: &B, f: Fx, masked: bool) {
    let mask = hf_mask(&f);
    assert_eq!(mask.is_some(), masked, "{}: masked", f.name);
    let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/top_k"));
    let cfg = lbl(1.0, LblLevel::MicroBatch, LblNormalization::HuggingFace);
    let z = hf_stack(&f, "/inputs/gate_logits_");
    let r = run(
        make,
        io,
        &z,
        RouterConfig::new(e, k),
        mask.as_deref(),
        None,
        &cfg,
    );
    if let Some(m) = &mask {
        let valid = m.iter().filter(|&&v| v == 1).count() as u64;
        assert_eq!(r.stats.tokens, valid, "{}: valid tokens", f.name);
    }
    value_and_dz::<B>(
        &f,
        ("HF LBL", r.losses[0]),
        (
            "dZ (layers stacked)",
            &r.dz,
            &hf_stack(&f, "/grads/d_loss_d_gate_logits_"),
        ),
    );
}

oracle_fns! {
    /// HF's `load_balancing_loss_func` without `attention_mask`.
    hf_lbl => hf_lbl_on(HF_LBL, false);

    /// HF's `load_balancing_loss_func` with `attention_mask` (Mixtral and Qwen2-MoE, 1 and 2
    /// layers).
    hf_masked_lbl => hf_lbl_on(HF_MASKED_LBL, true);
}
