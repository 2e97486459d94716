//! The whole model's analytic gradient (experts, gates through simbal's router backward, SimBal,
//! LBL, embeddings through the router's dX) against central differences, in f64.

use simbal_core::{Reference, Router};
use simbal_repro::methods::{Coefficients, InitPolicy, Method};
use simbal_repro::model::{Model, ModelState};
use simbal_repro::task::{Batch, SyntheticConfig, SyntheticTask, Task, TextTask};
use simbal_repro::train::{build_model, RunSpec, TrainConfig};

fn small_train() -> TrainConfig {
    TrainConfig {
        steps: 1,
        batch_seqs: 2,
        seq_len: 6,
        lr: 1e-3,
        eval_every: 1,
        val_seqs: 2,
        pes_tokens: 4,
        experts: 4,
        k: 2,
        hidden: 5,
        text_width: 3,
        text_emb: 2,
        capacity_factor: None,
    }
}

/// Objective = task loss + auxiliary losses, as the training step computes it.
fn objective(model: &Model<f64>, task_losses: &simbal_core::LossConfig, batch: &Batch<f64>) -> f64 {
    let mut m = model.clone();
    let mut router = Router::new(Reference::<f64>::new(), m.moe.config().router()).unwrap();
    let mut st = ModelState::default();
    let (loss, aux) = m
        .train_step(&mut router, batch, &mut st, task_losses)
        .unwrap();
    loss + aux.total
}

fn check_model(task: &Task, method: Method) {
    let cfg = small_train();
    let spec = RunSpec {
        method,
        seed: 11,
        coefs: Coefficients {
            // Large enough that the auxiliary gradients matter next to the task's.
            lbl_alpha: 0.5,
            simbal_lambda: 0.3,
            bias_rate: 1e-3,
        },
        // Gaussian init keeps SimBal away from its kinks at G_ab = 0.
        init: InitPolicy::Gaussian,
    };
    let mut model = build_model::<f64>(task, &cfg, &spec).unwrap();
    let losses = method.losses(&spec.coefs);
    let mut batch = Batch::default();
    task.sample(
        &mut simbal_core::Rng::new(3),
        cfg.batch_seqs,
        cfg.seq_len,
        &mut batch,
    )
    .unwrap();
    let mut router = Router::new(Reference::<f64>::new(), model.moe.config().router()).unwrap();
    let mut st = ModelState::default();
    model.zero_grad();
    model
        .train_step(&mut router, &batch, &mut st, &losses)
        .unwrap();
    let grads: Vec<Vec<f64>> = model.params_mut().iter().map(|p| p.g.clone()).collect();
    let h = 1e-6;
    let mut checked = 0;
    for (pi, g) in grads.iter().enumerate() {
        // Up to 7 entries per tensor, spread over it.
        let step = (g.len() / 7).max(1);
        for j in (0..g.len()).step_by(step) {
            let mut plus = model.clone();
            plus.params_mut()[pi].w[j] += h;
            let mut minus = model.clone();
            minus.params_mut()[pi].w[j] -= h;
            let fd = (objective(&plus, &losses, &batch) - objective(&minus, &losses, &batch))
                / (2.0 * h);
            let an = g[j];
            assert!(
                (an - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{} {}: param {pi} entry {j}: analytic {an} vs central difference {fd}",
                task.name(),
                method.name()
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} entries checked");
}

fn synthetic() -> Task {
    let cfg = SyntheticConfig {
        dim: 6,
        out_dim: 3,
        clusters: 5,
        clusters_per_seq: 2,
        teacher_hidden: 3,
        shared_mean: 1.0,
        ..SyntheticConfig::default()
    };
    Task::Synthetic(SyntheticTask::new(cfg, 4).unwrap())
}

#[test]
fn synthetic_model_gradients_match_central_differences_for_each_loss() {
    for m in [
        Method::None,
        Method::Switch,
        Method::SimBal,
        Method::SimBalFro,
        Method::SimBalScaleFree,
    ] {
        check_model(&synthetic(), m);
    }
}

#[test]
fn byte_lm_gradients_match_central_differences_including_embeddings() {
    let text: Vec<u8> =
        b"the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
            .iter()
            .copied()
            .cycle()
            .take(2000)
            .collect();
    let task = Task::Text(TextTask::from_bytes(text, 3, 0.2, "pangrams".into()).unwrap());
    check_model(&task, Method::Switch);
    check_model(&task, Method::SimBal);
}
