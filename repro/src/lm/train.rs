//! One language-model run: a method, a seed; burn's Adam on random windows of the training
//! text, metrics on fixed validation windows every `eval_every` steps.

use crate::error::{ReproError, Result};
use crate::lm::corpus::Corpus;
use crate::lm::eval::Evaluator;
use crate::lm::model::{cross_entropy, LmShape, MoeLm, RouterSetup};
use crate::metrics::RunLog;
use crate::train::{sub_seed, RunSpec};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::Serialize;
use simbal_burn::SimbalBackend;
use simbal_core::{LoadMetrics, Rng, WeightLayout};
use std::sync::Mutex;

/// Sizes and schedule of a language-model run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LmTrainConfig {
    /// The model.
    pub shape: LmShape,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences (windows of `seq_len + 1` bytes) per batch.
    pub batch_seqs: usize,
    /// Peak Adam learning rate.
    pub lr: f64,
    /// Linear warm-up steps, then cosine decay to `lr * final_lr_frac`.
    pub warmup_steps: usize,
    /// Learning rate at the last step, as a fraction of the peak.
    pub final_lr_frac: f64,
    /// Steps between evaluations.
    pub eval_every: usize,
    /// Validation windows (evenly spaced over the held-out text).
    pub val_windows: usize,
    /// Validation windows per forward pass.
    pub val_chunk: usize,
    /// Validation tokens PES is measured on (every expert runs on each, per layer).
    pub pes_tokens: usize,
}

impl LmTrainConfig {
    /// Tokens per training batch.
    pub fn batch_tokens(&self) -> usize {
        self.batch_seqs * self.shape.seq_len
    }

    /// Checks the sizes.
    ///
    /// # Errors
    /// [`ReproError::Config`] for a zero size or a bad learning rate.
    pub fn validate(&self) -> Result<()> {
        self.shape.validate()?;
        let sizes = [
            ("steps", self.steps),
            ("batch_seqs", self.batch_seqs),
            ("eval_every", self.eval_every),
            ("val_windows", self.val_windows),
            ("val_chunk", self.val_chunk),
            ("pes_tokens", self.pes_tokens),
        ];
        crate::error::check_sizes("", &sizes)?;
        let lr_ok = self.lr.is_finite() && self.lr > 0.0;
        let frac_ok = (0.0..=1.0).contains(&self.final_lr_frac);
        if !lr_ok || !frac_ok {
            return Err(ReproError::Config(format!(
                "lr must be > 0 and final_lr_frac in [0, 1], got {} and {}",
                self.lr, self.final_lr_frac
            )));
        }
        Ok(())
    }

    /// The learning rate of step `step` (1-based): linear warm-up, cosine decay.
    ///
    /// ```
    /// let cfg = simbal_repro::lm::run::default_config();
    /// assert_eq!(cfg.lr_at(cfg.warmup_steps), cfg.lr);
    /// assert!((cfg.lr_at(cfg.steps) - cfg.lr * cfg.final_lr_frac).abs() < 1e-12);
    /// ```
    pub fn lr_at(&self, step: usize) -> f64 {
        if step <= self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.final_lr_frac;
        self.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
    }
}

/// burn's generator is one per backend and process: runs that initialise at once on other
/// threads would interleave their draws. Initialisation holds this lock, so a seed gives the
/// same model in any schedule.
static INIT: Mutex<()> = Mutex::new(());

/// Touches every parameter, so that burn's lazy initialisation runs now.
struct Materialize;

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// The model of `spec`: the same attention, embeddings and experts for every method of a seed
/// (burn draws them from the seed), the router orthogonal or Gaussian by the method.
///
/// # Errors
/// As [`MoeLm::new`]; [`simbal_core::orthogonal_init`]'s.
pub fn build_lm<B: SimbalBackend>(
    shape: &LmShape,
    spec: &RunSpec,
    device: &B::Device,
) -> Result<MoeLm<B>> {
    let orthogonal = spec.method.orthogonal_init(spec.init);
    let setup = RouterSetup {
        losses: spec.method.losses(&spec.coefs),
        bias_update: spec.method.bias_update(&spec.coefs),
        orthogonal: false,
        seed: 0,
    };
    let mut model = {
        let _guard = INIT
            .lock()
            .map_err(|_| ReproError::Config("init lock poisoned".into()))?;
        B::seed(device, sub_seed(spec.seed, 1));
        let model = MoeLm::<B>::new(shape, &setup, device)?;
        // burn draws a parameter lazily, at its first use: draw them all now, under the lock.
        model.visit(&mut Materialize);
        model
    };
    if orthogonal {
        // Drawn Gaussian first (so burn's generator gave every method the same experts), then
        // replaced.
        let (d, e) = (shape.d_model, shape.experts);
        for (l, block) in model.blocks.iter_mut().enumerate() {
            let seed = sub_seed(spec.seed, 2).wrapping_add(l as u64);
            let host: Vec<f64> = simbal_core::orthogonal_init(WeightLayout::DxE, d, e, seed)?;
            let data = TensorData::new(host, [d, e]).convert::<B::FloatElem>();
            let r = Tensor::<B, 2>::from_data(data, device).require_grad();
            block.moe.router_weight = Param::initialized(block.moe.router_weight.id, r);
        }
    }
    Ok(model)
}

/// A batch of `batch` random windows of `t + 1` bytes from `text`: inputs `batch x t` and the
/// next bytes `batch t`, as host integers.
pub fn sample_windows(
    rng: &mut Rng,
    text: &[u8],
    batch: usize,
    t: usize,
) -> Result<(Vec<i64>, Vec<i64>)> {
    if text.len() < t + 2 {
        return Err(ReproError::Config(format!(
            "training text of {} bytes is shorter than a window of {}",
            text.len(),
            t + 1
        )));
    }
    let starts = text.len() - t - 1;
    let (mut x, mut y) = (Vec::with_capacity(batch * t), Vec::with_capacity(batch * t));
    for _ in 0..batch {
        let s = (rng.next_u64() % starts as u64) as usize;
        x.extend(text[s..s + t].iter().map(|&b| i64::from(b)));
        y.extend(text[s + 1..s + t + 1].iter().map(|&b| i64::from(b)));
    }
    Ok((x, y))
}

/// Host integers to an `Int` tensor of `shape`.
pub fn int_tensor<B: SimbalBackend, const D: usize>(
    v: Vec<i64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(v, shape).convert::<B::IntElem>(), device)
}

/// Load metrics of a router output's counts.
pub(crate) fn counts_of<B: SimbalBackend>(counts: Tensor<B, 1, Int>) -> Result<Vec<u64>> {
    let v = counts
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| ReproError::Config(format!("reading expert counts: {e:?}")))?;
    Ok(v.into_iter().map(|c| c.max(0) as u64).collect())
}

/// Trains `spec` on `corpus` on `device`; `progress` is told the steps done.
///
/// # Errors
/// Configuration and corpus errors; simbal's (routing, a failed router backward);
/// [`ReproError::Diverged`] for a non-finite loss.
pub fn train_lm<B>(
    device: &B::Device,
    corpus: &Corpus,
    cfg: &LmTrainConfig,
    spec: &RunSpec,
    progress: &mut dyn FnMut(usize),
) -> Result<RunLog>
where
    B: AutodiffBackend + SimbalBackend,
    B::InnerBackend: SimbalBackend,
{
    cfg.validate()?;
    let started = std::time::Instant::now();
    let t = cfg.shape.seq_len;
    let mut model = build_lm::<B>(&cfg.shape, spec, device)?;
    let mut eval = Evaluator::new(corpus.val(), cfg)?;
    let run_name = format!("{}/seed {}", spec.method.name(), spec.seed);
    let mut points = vec![eval.point(&model.valid(), device)?];
    let mut optim = AdamConfig::new().with_beta_2(0.95).init::<B, MoeLm<B>>();
    let mut rng = Rng::new(sub_seed(spec.seed, 5));
    let layers = cfg.shape.layers;
    let (mut loss_sum, mut since) = (0.0, 0usize);
    let mut vio_sum = vec![0.0; layers];
    for step in 1..=cfg.steps {
        let (x, y) = sample_windows(&mut rng, corpus.train(), cfg.batch_seqs, t)?;
        let x = int_tensor::<B, 2>(x, [cfg.batch_seqs, t], device);
        let y = int_tensor::<B, 1>(y, [cfg.batch_seqs * t], device);
        let out = model.forward(x, false)?;
        let ce = cross_entropy(out.logits, y);
        let ce_value: f64 = ce.clone().into_scalar().elem::<f64>();
        if !ce_value.is_finite() {
            return Err(ReproError::Diverged {
                run: run_name,
                step,
            });
        }
        let grads = (ce + out.aux).backward();
        for (l, (block, trace)) in model.blocks.iter().zip(&out.layers).enumerate() {
            if let Some(e) = block.moe.router()?.take_error()? {
                return Err(e.into());
            }
            // A router weight outside the graph would silently stay at its initialisation.
            if step == 1 && block.moe.router_weight.grad(&grads).is_none() {
                return Err(ReproError::Config(format!(
                    "{run_name}: the router weight of layer {l} gets no gradient"
                )));
            }
            vio_sum[l] +=
                LoadMetrics::from_counts(&counts_of(trace.router.counts.clone())?).max_vio;
        }
        let aux_simbal: f64 = out.layers.iter().map(|l| l.router.values.simbal).sum();
        let aux_lbl: f64 = out.layers.iter().map(|l| l.router.values.lbl).sum();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(cfg.lr_at(step), model, grads);
        model.update_biases()?;
        loss_sum += ce_value;
        since += 1;
        if step % cfg.eval_every == 0 || step == cfg.steps {
            let mut p = eval.point(&model.valid(), device)?;
            if !p.val_loss.is_finite() {
                return Err(ReproError::Diverged {
                    run: run_name,
                    step,
                });
            }
            p.step = step;
            p.tokens = step * cfg.batch_tokens();
            p.train_loss = Some(loss_sum / since as f64 / std::f64::consts::LN_2);
            for (lp, v) in p.layers.iter_mut().zip(&mut vio_sum) {
                lp.max_vio_train = Some(*v / since as f64);
                *v = 0.0;
            }
            p.max_vio_train = mean(p.layers.iter().filter_map(|l| l.max_vio_train));
            p.aux_simbal = aux_simbal;
            p.aux_lbl = aux_lbl;
            points.push(p);
            (loss_sum, since) = (0.0, 0);
        }
        progress(step);
    }
    Ok(RunLog::of(
        spec,
        B::name(device),
        points,
        started.elapsed().as_secs_f64(),
    ))
}

/// Mean of some values (`None` when there are none).
pub(crate) fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::run::default_config;

    #[test]
    fn learning_rate_warms_up_then_decays_to_its_floor() {
        let cfg = default_config();
        assert!((cfg.lr_at(1) - cfg.lr / cfg.warmup_steps as f64).abs() < 1e-15);
        assert!((cfg.lr_at(cfg.warmup_steps) - cfg.lr).abs() < 1e-15);
        let mid = cfg.lr_at((cfg.warmup_steps + cfg.steps) / 2);
        assert!((mid - cfg.lr * (cfg.final_lr_frac + 1.0) / 2.0).abs() < 1e-6 * cfg.lr);
        assert!((cfg.lr_at(cfg.steps) - cfg.lr * cfg.final_lr_frac).abs() < 1e-15);
        let mut prev = f64::INFINITY;
        for s in cfg.warmup_steps..=cfg.steps {
            assert!(cfg.lr_at(s) <= prev);
            prev = cfg.lr_at(s);
        }
    }

    #[test]
    fn windows_are_inputs_and_their_next_bytes() {
        let text: Vec<u8> = (0..100u8).collect();
        let mut rng = Rng::new(1);
        let (x, y) = sample_windows(&mut rng, &text, 3, 5).unwrap();
        assert_eq!((x.len(), y.len()), (15, 15));
        for (a, b) in x.iter().zip(&y) {
            assert_eq!(a + 1, *b);
        }
        assert!(sample_windows(&mut rng, &text[..5], 1, 5).is_err());
    }

    #[test]
    fn bad_sizes_are_configuration_errors() {
        let mut cfg = default_config();
        cfg.val_chunk = 0;
        assert!(matches!(cfg.validate(), Err(ReproError::Config(_))));
        let mut cfg = default_config();
        cfg.final_lr_frac = 1.5;
        assert!(cfg.validate().is_err());
        let mut cfg = default_config();
        cfg.shape.heads = 3;
        assert!(cfg.validate().is_err());
    }
}
