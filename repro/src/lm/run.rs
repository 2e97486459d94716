//! The language-model experiment's sizes (the default and the larger documented configuration)
//! and its runs on the chosen burn backend.

use crate::error::{ReproError, Result};
use crate::experiment::{BackendKind, ExperimentConfig, TaskSpec};
use crate::lm::corpus::Corpus;
use crate::lm::model::LmShape;
use crate::lm::train::{train_lm, LmTrainConfig};
use crate::metrics::RunLog;
use crate::train::RunSpec;
use burn::backend::{Autodiff, NdArray};

/// The model of both configurations: narrow (the budget goes to tokens, not width), four
/// blocks, 16 experts top-2 as the paper's OLMoE-style set-up, ReLU experts (30% faster than
/// GELU here, measured).
pub const SHAPE: LmShape = LmShape {
    vocab: 256,
    seq_len: 64,
    d_model: 64,
    heads: 4,
    layers: 4,
    experts: 16,
    k: 2,
    expert_hidden: 64,
};

/// The default configuration, sized so that the README's first command (build included) ends in
/// 15 minutes on a fresh 2-core machine.
pub fn default_config() -> LmTrainConfig {
    LmTrainConfig {
        shape: SHAPE,
        steps: 400,
        batch_seqs: 16,
        lr: 5e-3,
        warmup_steps: 40,
        final_lr_frac: 0.1,
        eval_every: 25,
        val_windows: 128,
        val_chunk: 32,
        pes_tokens: 256,
    }
}

/// The larger documented configuration (`--preset large`): the same model on ten times the
/// tokens.
pub fn large_config() -> LmTrainConfig {
    let base = default_config();
    LmTrainConfig {
        steps: base.steps * 10,
        warmup_steps: base.warmup_steps * 10,
        eval_every: base.eval_every * 5,
        ..base
    }
}

/// Whether `backend` trains on one device that runs cannot share (one run at a time).
pub fn one_run_at_a_time(backend: BackendKind) -> bool {
    matches!(backend, BackendKind::Wgpu | BackendKind::Cuda)
}

/// Trains `spec` on `backend`: `faer` is burn's `NdArray<f32>` with simbal-faer routers, `wgpu` and
/// `cuda` burn's GPU backends with simbal-cubecl routers (with the crate features of the same
/// names).
///
/// # Errors
/// [`ReproError::Config`] for the reference backend or a GPU backend this build lacks; the
/// run's ([`train_lm`]).
pub fn run_lm(
    backend: BackendKind,
    corpus: &Corpus,
    cfg: &LmTrainConfig,
    spec: &RunSpec,
    progress: &mut dyn FnMut(usize),
) -> Result<RunLog> {
    check_backend(backend)?;
    match backend {
        BackendKind::Faer => {
            train_lm::<Autodiff<NdArray<f32>>>(&Default::default(), corpus, cfg, spec, progress)
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            type B = Autodiff<burn::backend::Wgpu>;
            let device = Default::default();
            probe::<B>(&device, "wgpu")?;
            train_lm::<B>(&device, corpus, cfg, spec, progress)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            type B = Autodiff<burn::backend::Cuda>;
            let device = Default::default();
            probe::<B>(&device, "cuda")?;
            train_lm::<B>(&device, corpus, cfg, spec, progress)
        }
        // `check_backend` refused the others.
        #[allow(unreachable_patterns)]
        other => Err(ReproError::Config(format!(
            "backend {} cannot train the language model",
            other.name()
        ))),
    }
}

/// Whether this build can train the language model on `backend`.
///
/// # Errors
/// [`ReproError::Config`] for the reference backend (the model trains through burn) and for a
/// GPU backend this build lacks, naming the feature to build with.
pub fn check_backend(backend: BackendKind) -> Result<()> {
    match backend {
        BackendKind::Faer => Ok(()),
        BackendKind::Reference => Err(ReproError::Config(
            "the language model trains through burn: --backend faer, wgpu or cuda".into(),
        )),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(missing_feature("wgpu")),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(missing_feature("cuda")),
        #[allow(unreachable_patterns)]
        _ => Ok(()),
    }
}

/// Whether `backend` has a device here (the CPU always; a GPU backend when this build has it
/// and its runtime finds an adapter or driver).
pub fn device_available(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Faer | BackendKind::Reference => true,
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            probe::<Autodiff<burn::backend::Wgpu>>(&Default::default(), "wgpu").is_ok()
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            probe::<Autodiff<burn::backend::Cuda>>(&Default::default(), "cuda").is_ok()
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Opens the device's runtime once: cubecl panics when there is no adapter or driver, which
/// becomes an error here instead of a crash inside a training thread.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe<B: simbal_burn::SimbalBackend>(device: &B::Device, name: &str) -> Result<()> {
    let device = device.clone();
    let open = std::panic::AssertUnwindSafe(move || B::engine(&device).map(|_| ()));
    match std::panic::catch_unwind(open) {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReproError::Config(format!("no {name} device found"))),
    }
}

#[cfg(any(not(feature = "wgpu"), not(feature = "cuda")))]
fn missing_feature(name: &str) -> ReproError {
    ReproError::Config(format!(
        "this build has no {name} backend: cargo run --release -p simbal-repro --features {name} -- --backend {name}"
    ))
}

/// After a language-model experiment on a smaller configuration: how long the larger documented
/// one (`--preset large`, the same model) takes on this machine, extrapolated from the runs'
/// measured time per step. `None` for other tasks, the large configuration itself or a model
/// of another shape.
pub fn large_estimate(cfg: &ExperimentConfig, runs: &[RunLog]) -> Option<String> {
    let TaskSpec::Lm { train, .. } = &cfg.task else {
        return None;
    };
    let large = large_config();
    if train.shape != large.shape
        || train.batch_seqs != large.batch_seqs
        || train.steps >= large.steps
    {
        return None;
    }
    let n = runs.len().max(1);
    let per_step = runs.iter().map(|r| r.wall_secs).sum::<f64>() / n as f64 / train.steps as f64;
    let workers = if one_run_at_a_time(cfg.backend) {
        1
    } else {
        cfg.jobs.clamp(1, n)
    };
    let waves = n.div_ceil(workers);
    let secs = per_step * large.steps as f64 * waves as f64;
    Some(format!(
        "the larger configuration (--preset large: {} steps, {:.1} M tokens per run) takes about {:.0} min here for these {} runs \
         ({} at a time, {:.3} s per step measured in this run)",
        large.steps,
        (large.steps * large.batch_tokens()) as f64 / 1e6,
        secs / 60.0,
        n,
        workers,
        per_step
    ))
}
