//! One training run: a model, a method, a seed; logs metrics on a fixed validation sample.

use crate::adam::Adam;
use crate::error::{ReproError, Result};
use crate::methods::{Coefficients, InitPolicy, Method};
use crate::metrics::{routing_consistency, LogPoint, RunLog};
use crate::model::{HostBackend, Model, ModelState, MoeConfig, MoeLayer};
use crate::task::{Batch, Task};
use serde::Serialize;
use simbal_core::{
    orthogonality_error, pes, seu, update_bias, LoadMetrics, Rng, Router, RoutingStats, Scalar,
    WeightLayout,
};

/// Sizes and schedule of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per batch.
    pub batch_seqs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Adam learning rate (all parameters).
    pub lr: f64,
    /// Steps between logged points.
    pub eval_every: usize,
    /// Sequences in the validation sample.
    pub val_seqs: usize,
    /// Validation tokens PES is measured on (every expert runs on each).
    pub pes_tokens: usize,
    /// Experts `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Hidden width of each expert.
    pub hidden: usize,
    /// Expert output width for the text task (the synthetic task fixes it to its target width).
    pub text_width: usize,
    /// Text task: embedding width per context byte.
    pub text_emb: usize,
    /// Capacity factor (`None`: off).
    pub capacity_factor: Option<f64>,
}

impl TrainConfig {
    /// Tokens per training batch.
    pub fn batch_tokens(&self) -> usize {
        self.batch_seqs * self.seq_len
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("steps", self.steps),
            ("batch_seqs", self.batch_seqs),
            ("seq_len", self.seq_len),
            ("eval_every", self.eval_every),
            ("val_seqs", self.val_seqs),
            ("pes_tokens", self.pes_tokens),
            ("experts", self.experts),
            ("k", self.k),
            ("hidden", self.hidden),
            ("text_width", self.text_width),
            ("text_emb", self.text_emb),
        ];
        crate::error::check_sizes("", &checks)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ReproError::Config(format!(
                "lr must be > 0, got {}",
                self.lr
            )));
        }
        Ok(())
    }

    /// The MoE shapes for `task`.
    pub fn moe_config(&self, task: &Task) -> MoeConfig {
        let (d_in, d_out) = match task {
            Task::Synthetic(t) => (t.config().dim, t.config().out_dim),
            Task::Text(t) => (t.context() * self.text_emb, self.text_width),
        };
        MoeConfig {
            d_in,
            hidden: self.hidden,
            d_out,
            experts: self.experts,
            k: self.k,
            capacity_factor: self.capacity_factor,
        }
    }
}

/// Which run: method, seed and the method settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    /// The balancing method.
    pub method: Method,
    /// The seed: model initialisation and data order (same for every method).
    pub seed: u64,
    /// Method coefficients.
    pub coefs: Coefficients,
    /// Router initialisation policy.
    pub init: InitPolicy,
}

/// Derived seeds, so that every method sees the same initial experts, the same Gaussian draw for
/// its router and the same batches.
pub(crate) fn sub_seed(seed: u64, what: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ what
}

/// Builds the model of `task` for `spec`.
pub fn build_model<T: Scalar>(task: &Task, cfg: &TrainConfig, spec: &RunSpec) -> Result<Model<T>> {
    let moe_cfg = cfg.moe_config(task);
    let orthogonal = spec.method.orthogonal_init(spec.init);
    let mut moe = MoeLayer::new(
        moe_cfg,
        sub_seed(spec.seed, 1),
        sub_seed(spec.seed, 2),
        orthogonal,
    )?;
    moe.use_bias = spec.method.uses_bias();
    Ok(match task {
        Task::Synthetic(_) => Model::regression(moe),
        Task::Text(t) => Model::byte_lm(moe, t.context(), sub_seed(spec.seed, 3))?,
    })
}

struct Evaluator<T> {
    val: Batch<T>,
    st: ModelState<T>,
    stats: RoutingStats,
    pes_tokens: usize,
    synthetic: bool,
}

impl<T: Scalar> Evaluator<T> {
    fn point<B: HostBackend<T>>(
        &mut self,
        model: &mut Model<T>,
        router: &mut Router<B>,
    ) -> Result<LogPoint> {
        let val_loss = model.evaluate(router, &self.val, &mut self.st)?;
        let mc = *model.moe.config();
        let n = self.val.tokens();
        let load = load_metrics(router, &mut self.stats)?;
        let routing_entropy = router.routing_entropy()?.to_f64_lossy();
        let routing = router.routing()?;
        let idx = routing.indices();
        let seu = seu(
            n,
            mc.k,
            mc.experts,
            self.val.seq_len,
            idx,
            Some(routing.dropped()),
        )?;
        let consistency = if self.synthetic {
            routing_consistency(mc.k, mc.experts, idx, &self.val.cluster)
        } else {
            None
        };
        let np = self.pes_tokens.min(n);
        let outs = model
            .moe
            .all_expert_outputs(&self.st.x[..np * mc.d_in], np)?;
        let pes = pes(mc.experts, np, mc.d_out, &outs)?.to_f64_lossy();
        let (oms, omax) =
            orthogonality_error(WeightLayout::DxE, mc.d_in, mc.experts, &model.moe.router.w)?;
        // Step, tokens and the training-side fields are the caller's to fill in.
        Ok(LogPoint {
            val_loss,
            max_vio: load.max_vio,
            cv: load.cv,
            load_entropy: load.load_entropy,
            dead_experts: load.dead_experts,
            seu,
            pes,
            orth_mean_sq: oms.to_f64_lossy(),
            orth_max: omax.to_f64_lossy(),
            routing_entropy,
            consistency,
            ..LogPoint::default()
        })
    }
}

/// Load metrics of the router's last forward pass, through `stats` (no allocation once sized).
fn load_metrics<B: HostBackend<T>, T: Scalar>(
    router: &Router<B>,
    stats: &mut RoutingStats,
) -> Result<LoadMetrics> {
    router.stats_into(stats)?;
    Ok(LoadMetrics::from_counts(&stats.counts))
}

/// Trains `spec` on `task` with `backend`; `progress` is told the number of steps done.
pub fn train_run<B, T>(
    backend: B,
    task: &Task,
    cfg: &TrainConfig,
    spec: &RunSpec,
    progress: &mut dyn FnMut(usize),
) -> Result<RunLog>
where
    B: HostBackend<T> + Clone,
    T: Scalar,
{
    cfg.validate()?;
    let started = std::time::Instant::now();
    let mut model = build_model::<T>(task, cfg, spec)?;
    let mc = *model.moe.config();
    let mut router_train = Router::new(backend.clone(), mc.router())?;
    let mut router_eval = Router::new(backend, mc.router())?;
    let losses = spec.method.losses(&spec.coefs);
    let bias_update = spec.method.bias_update(&spec.coefs);
    let mut eval = Evaluator {
        val: task.validation(cfg.val_seqs, cfg.seq_len, sub_seed(spec.seed, 4))?,
        st: ModelState::default(),
        stats: RoutingStats::default(),
        pes_tokens: cfg.pes_tokens,
        synthetic: matches!(task, Task::Synthetic(_)),
    };
    let run_name = format!("{}/seed {}", spec.method.name(), spec.seed);
    let mut points = vec![eval.point(&mut model, &mut router_eval)?];
    let mut rng = Rng::new(sub_seed(spec.seed, 5));
    let mut adam = Adam::new(cfg.lr);
    let mut batch = Batch::default();
    let mut st = ModelState::default();
    let mut stats = RoutingStats::default();
    let (mut loss_sum, mut vio_sum, mut since) = (0.0, 0.0, 0usize);
    for step in 1..=cfg.steps {
        task.sample(&mut rng, cfg.batch_seqs, cfg.seq_len, &mut batch)?;
        model.zero_grad();
        let (loss, aux) = model.train_step(&mut router_train, &batch, &mut st, &losses)?;
        if !loss.is_finite() {
            return Err(ReproError::Diverged {
                run: run_name,
                step,
            });
        }
        let load = load_metrics(&router_train, &mut stats)?;
        if let Some(bu) = &bias_update {
            update_bias(router_train.backend(), bu, &stats, &mut model.moe.bias)?;
        }
        adam.begin_step();
        for p in model.params_mut() {
            adam.update(p);
        }
        loss_sum += loss;
        vio_sum += load.max_vio;
        since += 1;
        if step % cfg.eval_every == 0 || step == cfg.steps {
            let mut p = eval.point(&mut model, &mut router_eval)?;
            if !p.val_loss.is_finite() {
                return Err(ReproError::Diverged {
                    run: run_name,
                    step,
                });
            }
            p.step = step;
            p.tokens = step * cfg.batch_tokens();
            p.train_loss = Some(loss_sum / since as f64);
            p.max_vio_train = Some(vio_sum / since as f64);
            p.aux_simbal = aux.simbal.to_f64_lossy();
            p.aux_lbl = aux.lbl.to_f64_lossy();
            points.push(p);
            (loss_sum, vio_sum, since) = (0.0, 0.0, 0);
        }
        progress(step);
    }
    Ok(RunLog::of(
        spec,
        router_train.backend().name(),
        points,
        started.elapsed().as_secs_f64(),
    ))
}
