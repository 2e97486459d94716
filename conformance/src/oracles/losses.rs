//! The losses and the bias update against Megatron-Core and HF: Switch LBL, sequence LBL,
//! z-loss, `get_updated_expert_bias`, HF's `load_balancing_loss_func`.

use super::fixture::{near, near1, ok, tol, Fx};
use super::{BIAS, HF_LBL, SEQ_LBL, SWITCH_LBL, Z_LOSS};
use crate::harness::run::{read_forward, read_logit_backward};
use crate::harness::util::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::{
    update_bias, Backend, BiasUpdateConfig, LblConfig, LblLevel, LblNormalization, LossConfig,
    Router, RouterConfig, RoutingStats, ZLossConfig,
};

/// One softmax top-`k` pass from `z` (`n x e`) with `losses` and `dW = 0`: the counts, the
/// loss values `(lbl, z_loss)` and `dZ`.
fn loss_pass<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    io: &B,
    z: &[f64],
    e: usize,
    k: usize,
    losses: &LossConfig,
) -> (Vec<u32>, [f64; 2], Vec<f64>) {
    let zb = ok("upload", up(io, z));
    let dw = ok("upload", up(io, &vec![0.0; z.len() / e * k]));
    let mut router = ok(
        "Router::new",
        Router::new(fresh(make), RouterConfig::new(e, k)),
    );
    let mut pass = ok(
        "forward_logits",
        router.forward_logits(view::<B>(&zb), None),
    );
    let counts = ok("download", read_forward(io, &pass)).counts;
    let g = ok("backward", pass.backward(view::<B>(&dw), losses, None));
    let back = ok("download", read_logit_backward(io, &g));
    (counts, [back.losses[1], back.losses[2]], back.dz)
}

/// The fixture's loss value against `value` and its gradient against `dz`, each named in the
/// failure message.
fn value_and_dz<B: Backend>(f: &Fx, value: (&str, f64), dz: (&str, &[f64], &[f64])) {
    let name = |what: &str| format!("{}: {what}", f.name);
    near1(
        &name(value.0),
        value.1,
        f.f64("/outputs/loss/value"),
        tol::<B>(),
    );
    near(&name(dz.0), dz.1, dz.2, tol::<B>());
}

fn lbl(alpha: f64, level: LblLevel, normalization: LblNormalization) -> LossConfig {
    LossConfig::none().with_lbl(LblConfig {
        alpha,
        level,
        normalization,
        ..LblConfig::default()
    })
}

/// Megatron's micro-batch aux loss (`switch_load_balancing_loss_func` as `TopKRouter.routing`
/// assembles it), softmax, no mask: value, `dZ` and counts.
pub fn switch_lbl<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "oracles::switch_lbl";
    let Some(io) = acquire(make, NAME) else {
        return;
    };
    for fixture in SWITCH_LBL {
        let f = Fx::parse(fixture);
        assert_eq!(f.str("/args/score_function"), "softmax", "{}", f.name);
        assert!(f.opt("/inputs/valid").is_none(), "{}: masked", f.name);
        let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/topk"));
        let cfg = lbl(
            f.f64("/args/moe_aux_loss_coeff"),
            LblLevel::MicroBatch,
            LblNormalization::Switch,
        );
        let (counts, v, dz) = loss_pass(make, &io, &f.data("/inputs/logits"), e, k, &cfg);
        let want: Vec<u32> = f
            .data("/outputs/tokens_per_expert")
            .iter()
            .map(|&c| c as u32)
            .collect();
        assert_eq!(counts, want, "{}: counts", f.name);
        value_and_dz::<B>(
            &f,
            ("LBL", v[0]),
            ("dZ", &dz, &f.data("/grads/d_loss_d_logits")),
        );
    }
}

/// Megatron's sequence aux loss (`TopKRouter._apply_seq_aux_loss`), softmax, no mask, its
/// `[S, B]` rows permuted to simbal's batch-major `[B, S]`: value and `dZ`.
pub fn seq_lbl<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "oracles::seq_lbl";
    let Some(io) = acquire(make, NAME) else {
        return;
    };
    for fixture in SEQ_LBL {
        let f = Fx::parse(fixture);
        assert_eq!(f.str("/args/score_function"), "softmax", "{}", f.name);
        assert!(f.opt("/inputs/valid_sb").is_none(), "{}: masked", f.name);
        let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/topk"));
        let (s, b) = (f.usize("/args/seq_length"), f.usize("/args/bsz"));
        assert_eq!(f.shape("/inputs/logits"), [s, b, e], "{}", f.name);
        // Megatron's row s*B + b is simbal's row b*S + s.
        let to_batch_major = |v: &[f64]| {
            let mut out = vec![0.0; v.len()];
            for si in 0..s {
                for bi in 0..b {
                    let (from, to) = ((si * b + bi) * e, (bi * s + si) * e);
                    out[to..to + e].copy_from_slice(&v[from..from + e]);
                }
            }
            out
        };
        let cfg = lbl(
            f.f64("/args/seq_aux_loss_coeff"),
            LblLevel::sequences(s),
            LblNormalization::Switch,
        );
        let z = to_batch_major(&f.data("/inputs/logits"));
        let (_, v, dz) = loss_pass(make, &io, &z, e, k, &cfg);
        value_and_dz::<B>(
            &f,
            ("sequence LBL", v[0]),
            (
                "dZ (batch-major)",
                &dz,
                &to_batch_major(&f.data("/grads/d_loss_d_logits")),
            ),
        );
    }
}

/// Megatron's `z_loss_func`, no mask: value and `dZ`.
pub fn z_loss<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "oracles::z_loss";
    let Some(io) = acquire(make, NAME) else {
        return;
    };
    for fixture in Z_LOSS {
        let f = Fx::parse(fixture);
        assert!(f.opt("/inputs/valid").is_none(), "{}: masked", f.name);
        let e = f.shape("/inputs/logits")[1];
        let cfg = LossConfig::none().with_z_loss(ZLossConfig {
            beta: f.f64("/args/z_loss_coeff"),
        });
        let (_, v, dz) = loss_pass(make, &io, &f.data("/inputs/logits"), e, 2, &cfg);
        value_and_dz::<B>(
            &f,
            ("z-loss", v[1]),
            ("dZ", &dz, &f.data("/grads/d_loss_d_logits")),
        );
    }
}

/// Megatron's `get_updated_expert_bias` (one rank): `update_bias`, not centred.
pub fn bias_update<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "oracles::bias_update";
    let Some(io) = acquire(make, NAME) else {
        return;
    };
    for fixture in BIAS {
        let f = Fx::parse(fixture);
        let counts: Vec<u64> = f
            .data("/inputs/tokens_per_expert")
            .iter()
            .map(|&c| {
                assert!(c >= 0.0 && c.fract() == 0.0, "{}: count {c}", f.name);
                c as u64
            })
            .collect();
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
        let mut bias = ok("upload", up(&io, &f.data("/inputs/expert_bias")));
        ok(
            "update_bias",
            update_bias(&io, &cfg, &stats, view_mut::<B>(&mut bias)),
        );
        near(
            &format!("{}: updated bias", f.name),
            &ok("download", down(&io, &bias)),
            &f.data("/outputs/updated_expert_bias"),
            tol::<B>(),
        );
    }
}

/// HF transformers' `load_balancing_loss_func` without `attention_mask`: the layers' logits
/// stacked into one pass (HF pools their counts and score sums), HuggingFace normalisation,
/// `alpha = 1`: value and each layer's `dZ`.
pub fn hf_lbl<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "oracles::hf_lbl";
    let Some(io) = acquire(make, NAME) else {
        return;
    };
    for fixture in HF_LBL {
        let f = Fx::parse(fixture);
        assert!(
            f.opt("/inputs/attention_mask").is_none(),
            "{}: masked",
            f.name
        );
        let (e, k) = (f.usize("/args/num_experts"), f.usize("/args/top_k"));
        let layers = f.usize("/args/num_layers");
        let rows = f.usize("/args/batch_size") * f.usize("/args/seq_len");
        let stack = |prefix: &str| {
            let mut v = Vec::new();
            for l in 0..layers {
                let d = f.data(&format!("{prefix}{l}"));
                assert_eq!(d.len(), rows * e, "{}: layer {l}", f.name);
                v.extend(d);
            }
            v
        };
        let cfg = lbl(1.0, LblLevel::MicroBatch, LblNormalization::HuggingFace);
        let (_, v, dz) = loss_pass(make, &io, &stack("/inputs/gate_logits_"), e, k, &cfg);
        value_and_dz::<B>(
            &f,
            ("HF LBL", v[0]),
            (
                "dZ (layers stacked)",
                &dz,
                &stack("/grads/d_loss_d_gate_logits_"),
            ),
        );
    }
}
