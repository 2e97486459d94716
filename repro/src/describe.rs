//! What `summary.md` says about the experiment: the task, the model, the training, and for the
//! language model the corpus and the measured throughput.

use crate::experiment::{ExperimentConfig, TaskData, TaskSpec};
use crate::metrics::RunLog;

/// The experiment's description lines.
pub(crate) fn describe_task(cfg: &ExperimentConfig, data: &TaskData, runs: &[RunLog]) -> String {
    match (&cfg.task, data) {
        (TaskSpec::Lm { train, .. }, TaskData::Lm(corpus)) => {
            let s = &train.shape;
            let (total, active) = s.parameters();
            let tokens = train.steps * train.batch_tokens();
            let wall: f64 =
                runs.iter().map(|r| r.wall_secs).sum::<f64>() / runs.len().max(1) as f64;
            format!(
                "- task: byte-level language modelling (256 symbols), {}\n\
                 - model: decoder-only transformer, {} blocks of pre-norm causal self-attention ({} heads) and an MoE feed-forward; \
                 d_model {}, context {}, E = {} experts top-{} (softmax scores, renormalised gates, no capacity limit), \
                 experts 2-layer ReLU MLPs (hidden {}), learned positions, untied read-out; {:.2} M parameters, {:.2} M active per token; \
                 routers through simbal-burn, the rest burn 0.21 modules and autodiff\n\
                 - training: {} steps x {} windows x {} bytes = {:.2} M tokens per run, Adam (beta2 0.95) peak lr {} with {} warm-up steps and cosine decay to {}x, \
                 auxiliary losses per layer, summed over layers; seeds {:?}, backend {}\n\
                 - measured every {} steps on {} fixed validation windows ({} tokens); validation loss in bits per byte; PES on the first {} of them, per layer; \
                 routing consistency = fraction of validation tokens whose top-1 expert is the previous evaluation's, per layer\n\
                 - throughput: {:.0} s per run on average, {:.0} training tokens/s per run (evaluations included), {} runs at a time\n",
                corpus.describe(),
                s.layers,
                s.heads,
                s.d_model,
                s.seq_len,
                s.experts,
                s.k,
                s.expert_hidden,
                total as f64 / 1e6,
                active as f64 / 1e6,
                train.steps,
                train.batch_seqs,
                s.seq_len,
                tokens as f64 / 1e6,
                train.lr,
                train.warmup_steps,
                train.final_lr_frac,
                cfg.seeds,
                cfg.backend.name(),
                train.eval_every,
                train.val_windows,
                train.val_windows * s.seq_len,
                train.pes_tokens,
                wall,
                tokens as f64 / wall.max(1e-9),
                if crate::lm::run::one_run_at_a_time(cfg.backend) { 1 } else { cfg.jobs }
            )
        }
        _ => describe_first_edition(cfg),
    }
}

/// The first edition's tasks, as lines of `summary.md`.
pub(crate) fn describe_first_edition(cfg: &ExperimentConfig) -> String {
    let t = &cfg.train;
    let task = match &cfg.task {
        TaskSpec::Synthetic { config: c, task_seed } => format!(
            "synthetic: {} clusters in R^{} (centre std {}, noise std {}, popularity zipf {}), {} clusters per sequence, \
             per-cluster teacher tanh MLP (hidden {}, gain {}) -> R^{}; task seed {}; loss = mean squared error",
            c.clusters,
            c.dim,
            c.center_scale,
            c.noise,
            c.zipf,
            c.clusters_per_seq,
            c.teacher_hidden,
            c.teacher_gain,
            c.out_dim,
            task_seed.map(|s| s.to_string()).unwrap_or_else(|| "= run seed".into())
        ),
        TaskSpec::Lm { .. } => String::new(),
        TaskSpec::Text { corpus, context, val_fraction } => format!(
            "text: byte-level LM on {} ({} bytes of context x {}-wide embeddings, last {:.0}% held out); loss = cross-entropy in nats/byte",
            corpus.display(),
            context,
            t.text_emb,
            val_fraction * 100.0
        ),
    };
    format!(
        "- task: {task}\n- model: one MoE layer, E = {} experts, top-{} softmax routing with renormalised gates, experts 2-layer ReLU MLPs (hidden {}), capacity {}\n\
         - training: {} steps x {} sequences x {} tokens = {} tokens, Adam lr {}, seeds {:?}, backend {}\n\
         - measured every {} steps on a fixed validation sample of {} sequences; PES on its first {} tokens\n",
        t.experts,
        t.k,
        t.hidden,
        t.capacity_factor.map(|f| format!("factor {f}")).unwrap_or_else(|| "off".into()),
        t.steps,
        t.batch_seqs,
        t.seq_len,
        t.steps * t.batch_tokens(),
        t.lr,
        cfg.seeds,
        cfg.backend.name(),
        t.eval_every,
        t.val_seqs,
        t.pes_tokens
    )
}
