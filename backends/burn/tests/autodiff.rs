//! burn's own autodiff of simbal's formulas, written with burn tensor ops on
//! `Autodiff<NdArray<f64>>`, against simbal-burn's analytic gradients: the gates (renormalised
//! top-k of softmax or scaled sigmoid scores at simbal's indices, which are piecewise constant),
//! the Switch LBL (counts from the plain top-k, per-token normalised sigmoid scores), z-loss and
//! SimBal, with and without a token mask. f64, relative error 1e-10.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Int, Tensor, TensorData};
use common::{float, host, host_int, max_rel, normal};
use simbal_burn::{MoeRouter, TensorBatch};
use simbal_core::{
    orthogonal_init, LblConfig, LossConfig, RouterConfig, ScoreFn, WeightLayout, ZLossConfig,
};

type B = Autodiff<NdArray<f64>>;
const N: usize = 20;
const D: usize = 10;
const E: usize = 6;
const K: usize = 2;
const ALPHA: f64 = 0.01;
const BETA: f64 = 1e-3;
const LAMBDA: f64 = 0.1;

/// `(dX, dR)` of `sum(gates * dw) + SimBal + LBL + z-loss` by burn's autodiff of the formulas.
fn by_burn_autodiff(
    score: ScoreFn,
    scale: f64,
    x: &[f64],
    r: &[f64],
    dw: &[f64],
    indices: &[i64],
    mask: &[bool],
) -> (Vec<f64>, Vec<f64>) {
    let xt = float::<B, 2>(x, [N, D]).require_grad();
    let rt = float::<B, 2>(r, [D, E]).require_grad();
    let z = xt.clone().matmul(rt.clone());
    let p = match score {
        ScoreFn::Softmax => softmax(z.clone(), 1),
        // Not `activation::sigmoid`: burn-ndarray 0.21 evaluates it in f32 even for f64
        // tensors (relative error ~5e-8, see `burn_sigmoid_is_f32_precise`).
        _ => (z.clone().neg().exp() + 1.0).recip(),
    };
    let idx = Tensor::<B, 2, Int>::from_data(
        TensorData::new(indices.to_vec(), [N, K]),
        &Default::default(),
    );
    let chosen = p.clone().gather(1, idx);
    let gates = chosen.clone() / chosen.sum_dim(1) * scale;
    let task = (gates * float::<B, 2>(dw, [N, K])).sum();
    // Valid tokens: a row weight 1 or 0.
    let valid: Vec<f64> = mask.iter().map(|&m| f64::from(u8::from(m))).collect();
    let nv = valid.iter().sum::<f64>();
    let w = float::<B, 2>(&valid, [N, 1]);
    // LBL: alpha E / (k Nv^2) sum_e count_e S_e, counts of valid tokens' top-k (no bias here,
    // so the plain top-k is the selection), S_e the column sums of normalised scores.
    let mut counts = vec![0.0; E];
    for t in (0..N).filter(|&t| mask[t]) {
        for j in 0..K {
            counts[indices[t * K + j] as usize] += 1.0;
        }
    }
    let q = match score {
        ScoreFn::Softmax => p,
        _ => p.clone() / p.sum_dim(1),
    };
    let sums = (q * w.clone()).sum_dim(0); // [1, E]
    let lbl =
        (sums * float::<B, 2>(&counts, [1, E])).sum() * (ALPHA * E as f64 / (K as f64 * nv * nv));
    // z-loss: beta mean over valid tokens of lse(z)^2.
    let m = z.clone().max_dim(1).detach();
    let lse = (z - m.clone()).exp().sum_dim(1).log() + m;
    let zl = (lse.powi_scalar(2) * w).sum() * (BETA / nv);
    // SimBal L1: lambda sum |R^T R - I|.
    let mut eye = vec![0.0; E * E];
    (0..E).for_each(|i| eye[i * E + i] = 1.0);
    let gram = rt.clone().transpose().matmul(rt.clone()) - float::<B, 2>(&eye, [E, E]);
    let sb = gram.abs().sum() * LAMBDA;
    let grads = (task + lbl + zl + sb).backward();
    (
        host(&xt.grad(&grads).unwrap()),
        host(&rt.grad(&grads).unwrap()),
    )
}

fn cross_check(score: ScoreFn, scale: f64, masked: bool, seed: u64) {
    let mut rng = simbal_core::Rng::new(seed);
    let x = normal(&mut rng, N * D, 1.0);
    let r0: Vec<f64> = orthogonal_init(WeightLayout::DxE, D, E, seed).unwrap();
    // Off orthogonality (no G_ab = 0 kink) by a random perturbation.
    let r: Vec<f64> = r0.iter().map(|v| v * 1.1 + rng.normal() * 0.1).collect();
    let dw = normal(&mut rng, N * K, 1.0);
    let mask: Vec<bool> = (0..N).map(|t| !masked || t % 4 != 1).collect();
    let cfg = RouterConfig::new(E, K).with_score(score).with_scale(scale);
    let losses = LossConfig::simbal()
        .with_lbl(LblConfig {
            alpha: ALPHA,
            ..LblConfig::default()
        })
        .with_z_loss(ZLossConfig { beta: BETA });
    let router = MoeRouter::<B>::new(cfg, &Default::default()).unwrap();
    let xt = float::<B, 2>(&x, [N, D]).require_grad();
    let rt = float::<B, 2>(&r, [D, E]).require_grad();
    let batch = if masked {
        TensorBatch::new().mask(common::bools::<B>(&mask))
    } else {
        TensorBatch::new()
    };
    let out = router
        .forward_batch(xt.clone(), rt.clone(), batch, &losses, None)
        .unwrap();
    let indices = host_int(&out.indices);
    let obj = (out.gates.clone() * float::<B, 2>(&dw, [N, K])).sum() + out.losses.total();
    let grads = obj.backward();
    let (dx, dr) = (
        host(&xt.grad(&grads).unwrap()),
        host(&rt.grad(&grads).unwrap()),
    );
    let (want_dx, want_dr) = by_burn_autodiff(score, scale, &x, &r, &dw, &indices, &mask);
    let (ex, er) = (max_rel(&dx, &want_dx), max_rel(&dr, &want_dr));
    assert!(
        ex <= 1e-10 && er <= 1e-10,
        "{score:?} masked={masked}: dX {ex:e}, dR {er:e}"
    );
}

#[test]
fn softmax_gates_lbl_z_loss_and_simbal() {
    cross_check(ScoreFn::Softmax, 1.0, false, 1);
}

#[test]
fn sigmoid_scaled_gates_with_normalised_lbl_scores() {
    cross_check(ScoreFn::Sigmoid, 2.5, false, 2);
}

#[test]
fn masked_tokens() {
    cross_check(ScoreFn::Softmax, 1.0, true, 3);
    cross_check(ScoreFn::Sigmoid, 1.0, true, 4);
}

/// Why the formulas above spell the sigmoid out: burn-ndarray's own is f32-precise in f64. If this
/// starts failing, burn fixed it and the cross-check may use `activation::sigmoid` again.
#[test]
fn burn_sigmoid_is_f32_precise() {
    let v = [0.3f64, -1.7, 2.2];
    let got = host(&sigmoid(float::<B, 1>(&v, [3])));
    let worst = got
        .iter()
        .zip(v)
        .map(|(g, x)| (g - 1.0 / (1.0 + (-x).exp())).abs())
        .fold(0.0, f64::max);
    assert!(worst > 1e-12 && worst < 1e-6, "{worst:e}");
}
