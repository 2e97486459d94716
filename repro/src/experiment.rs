//! The experiment: every method over every seed, in parallel, then the report and the plots.

use crate::error::{ReproError, Result};
use crate::lm::corpus::{Corpus, CorpusConfig};
use crate::lm::train::LmTrainConfig;
use crate::methods::{Coefficients, InitPolicy, Method};
use crate::metrics::RunLog;
use crate::task::{SyntheticConfig, SyntheticTask, Task, TextTask};
use crate::train::{train_run, RunSpec, TrainConfig};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use simbal_core::Reference;
use simbal_faer::{Faer, Par};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Which simbal backend computes the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum BackendKind {
    /// `simbal_faer::Faer<f32>`.
    #[default]
    Faer,
    /// `simbal_core::Reference<f32>`, the scalar reference.
    Reference,
    /// The language model on burn's `Wgpu` backend, simbal-cubecl routers (feature `wgpu`).
    Wgpu,
    /// The language model on burn's `Cuda` backend, simbal-cubecl routers (feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Faer => "faer",
            BackendKind::Reference => "reference",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Where the tokens come from: the language model on real text (the main experiment) or the
/// first edition's one-layer tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum TaskSpec {
    /// The synthetic task; drawn from each run's seed unless `task_seed` fixes it.
    Synthetic {
        /// Task parameters.
        config: SyntheticConfig,
        /// Fixed task seed (`None`: the run's seed).
        task_seed: Option<u64>,
    },
    /// The multi-layer MoE transformer language model on real text (burn + simbal-burn).
    Lm {
        /// A text file (`None`: the system's manual pages, [`Corpus::from_system_docs`]).
        corpus: Option<PathBuf>,
        /// Selection and split of the system corpus; its `val_fraction` also splits a file.
        corpus_config: CorpusConfig,
        /// Model, sizes and schedule (the first edition's [`ExperimentConfig::train`] is unused).
        train: LmTrainConfig,
    },
    /// First edition: one MoE layer as a byte-level model with a fixed context on a file.
    Text {
        /// The text file.
        corpus: PathBuf,
        /// Bytes of context.
        context: usize,
        /// Held-out fraction (the end of the file).
        val_fraction: f64,
    },
}

/// Everything an experiment needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentConfig {
    /// The task.
    pub task: TaskSpec,
    /// Sizes and schedule.
    pub train: TrainConfig,
    /// Methods compared.
    pub methods: Vec<Method>,
    /// Seeds; every method runs on each.
    pub seeds: Vec<u64>,
    /// Method coefficients.
    pub coefs: Coefficients,
    /// Router initialisation policy.
    pub init: InitPolicy,
    /// Backend of the router.
    pub backend: BackendKind,
    /// Runs trained at once.
    pub jobs: usize,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Show progress bars.
    pub progress: bool,
    /// A TrueType font for plot labels (`None`: look in the usual system places).
    pub font: Option<PathBuf>,
}

impl ExperimentConfig {
    /// The default experiment: the synthetic task, every method, seeds 0..3, sized to run in a few
    /// minutes on two cores.
    pub fn default_synthetic() -> Self {
        Self {
            task: TaskSpec::Synthetic {
                config: SyntheticConfig::default(),
                task_seed: None,
            },
            train: TrainConfig {
                steps: 2500,
                batch_seqs: 8,
                seq_len: 32,
                lr: 3e-3,
                eval_every: 50,
                val_seqs: 32,
                pes_tokens: 256,
                experts: 8,
                k: 2,
                hidden: 32,
                text_width: 64,
                text_emb: 16,
                capacity_factor: None,
            },
            methods: Method::ALL.to_vec(),
            seeds: vec![0, 1, 2],
            coefs: Coefficients::default(),
            init: InitPolicy::Paper,
            backend: BackendKind::Faer,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            out_dir: PathBuf::from("repro-out"),
            progress: true,
            font: None,
        }
    }

    /// The main experiment: the MoE transformer language model on the system's manual pages,
    /// the default configuration ([`crate::lm::run::default_config`]), every method but
    /// SimBal-Frobenius, seeds 0..3.
    pub fn default_lm() -> Self {
        let mut cfg = Self::default_synthetic();
        cfg.task = TaskSpec::Lm {
            corpus: None,
            corpus_config: CorpusConfig::default(),
            train: crate::lm::run::default_config(),
        };
        cfg.methods = Method::LM.to_vec();
        cfg
    }

    /// Optimiser steps of each run.
    pub fn steps(&self) -> usize {
        match &self.task {
            TaskSpec::Lm { train, .. } => train.steps,
            _ => self.train.steps,
        }
    }

    /// The default text experiment on `corpus`: the synthetic defaults with a wider expert and
    /// fewer steps (a small file overfits; the table also reports the best validation loss).
    pub fn default_text(corpus: PathBuf) -> Self {
        let mut cfg = Self::default_synthetic();
        cfg.task = TaskSpec::Text {
            corpus,
            context: 4,
            val_fraction: 0.1,
        };
        cfg.train.hidden = 64;
        cfg.train.steps = 800;
        cfg.train.eval_every = 25;
        cfg
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if self.methods.is_empty() {
            return Err(ReproError::Config("no methods".into()));
        }
        if self.seeds.is_empty() {
            return Err(ReproError::Config("no seeds".into()));
        }
        if self.jobs == 0 {
            return Err(ReproError::Config("jobs must be >= 1".into()));
        }
        match &self.task {
            TaskSpec::Text { context: 0, .. } => {
                return Err(ReproError::Config("context must be >= 1".into()))
            }
            TaskSpec::Lm { train, .. } => train.validate()?,
            _ => {}
        }
        let lm = matches!(self.task, TaskSpec::Lm { .. });
        let gpu = matches!(self.backend, BackendKind::Wgpu | BackendKind::Cuda);
        if gpu && !lm {
            return Err(ReproError::Config(
                "the first edition's tasks run on faer or reference; --backend wgpu/cuda is for the language model".into(),
            ));
        }
        if lm {
            crate::lm::run::check_backend(self.backend)?;
        }
        Ok(())
    }

    fn task_for(&self, seed: u64, text: &Option<TextTask>) -> Result<Task> {
        match (&self.task, text) {
            (TaskSpec::Synthetic { config, task_seed }, _) => Ok(Task::Synthetic(
                SyntheticTask::new(*config, task_seed.unwrap_or(seed))?,
            )),
            (TaskSpec::Text { .. }, Some(t)) => Ok(Task::Text(t.clone())),
            (TaskSpec::Text { .. }, None) => Err(ReproError::Config("text task not loaded".into())),
            (TaskSpec::Lm { .. }, _) => Err(ReproError::Config(
                "the language model has no first-edition task".into(),
            )),
        }
    }
}

fn run_one(
    cfg: &ExperimentConfig,
    task: &Task,
    spec: &RunSpec,
    bar: &ProgressBar,
) -> Result<RunLog> {
    let mut tick = |s: usize| {
        if s % 10 == 0 || s == cfg.train.steps {
            bar.set_position(s as u64);
        }
    };
    match cfg.backend {
        BackendKind::Reference => {
            train_run(Reference::<f32>::new(), task, &cfg.train, spec, &mut tick)
        }
        BackendKind::Wgpu | BackendKind::Cuda => Err(ReproError::Config(
            "the first edition's tasks run on faer or reference".into(),
        )),
        BackendKind::Faer => {
            // Runs are trained in parallel: each router stays on its own thread.
            let par = if cfg.jobs > 1 {
                Par::Seq
            } else {
                Par::rayon(0)
            };
            train_run(
                Faer::<f32>::with_par(par),
                task,
                &cfg.train,
                spec,
                &mut tick,
            )
        }
    }
}

/// A task's data, loaded once for every run.
#[derive(Debug, Clone)]
pub enum TaskData {
    /// First edition: one task per seed, in `cfg.seeds` order.
    Tasks(Vec<Task>),
    /// The language model's corpus.
    Lm(Corpus),
}

impl TaskData {
    /// Loads (or draws) the data of `cfg`'s task.
    ///
    /// # Errors
    /// Reading or extracting the text; the synthetic task's configuration.
    pub fn load(cfg: &ExperimentConfig) -> Result<TaskData> {
        let text = match &cfg.task {
            TaskSpec::Lm {
                corpus,
                corpus_config,
                ..
            } => {
                return Ok(TaskData::Lm(match corpus {
                    Some(path) => Corpus::from_file(path, corpus_config.val_fraction)?,
                    None => Corpus::from_system_docs(corpus_config)?,
                }))
            }
            TaskSpec::Text {
                corpus,
                context,
                val_fraction,
            } => Some(TextTask::from_file(corpus, *context, *val_fraction)?),
            TaskSpec::Synthetic { .. } => None,
        };
        let tasks = cfg
            .seeds
            .iter()
            .map(|&s| cfg.task_for(s, &text))
            .collect::<Result<_>>()?;
        Ok(TaskData::Tasks(tasks))
    }

    /// One run of `spec`.
    fn run(&self, cfg: &ExperimentConfig, spec: &RunSpec, bar: &ProgressBar) -> Result<RunLog> {
        match (self, &cfg.task) {
            (TaskData::Lm(corpus), TaskSpec::Lm { train, .. }) => {
                let steps = train.steps;
                let mut tick = |s: usize| {
                    if s % 5 == 0 || s == steps {
                        bar.set_position(s as u64);
                    }
                };
                crate::lm::run::run_lm(cfg.backend, corpus, train, spec, &mut tick)
            }
            (TaskData::Tasks(tasks), _) => {
                let seed_pos = cfg.seeds.iter().position(|&x| x == spec.seed).unwrap_or(0);
                let task = tasks
                    .get(seed_pos)
                    .ok_or_else(|| ReproError::Config("no task for the seed".into()))?;
                run_one(cfg, task, spec, bar)
            }
            _ => Err(ReproError::Config(
                "loaded data does not fit the task".into(),
            )),
        }
    }
}

/// Trains every method on every seed (`jobs` at a time; one at a time on a GPU) and returns the
/// logs, methods in `cfg.methods` order, seeds in `cfg.seeds` order within a method.
///
/// # Errors
/// The configuration's and the data's; the first failed run's.
pub fn train_all(cfg: &ExperimentConfig) -> Result<Vec<RunLog>> {
    cfg.validate()?;
    train_loaded(cfg, &TaskData::load(cfg)?)
}

/// [`train_all`] on data already loaded.
///
/// # Errors
/// As [`train_all`].
pub fn train_loaded(cfg: &ExperimentConfig, data: &TaskData) -> Result<Vec<RunLog>> {
    cfg.validate()?;
    let mut jobs = Vec::new();
    for &method in &cfg.methods {
        for &seed in &cfg.seeds {
            jobs.push(RunSpec {
                method,
                seed,
                coefs: cfg.coefs,
                init: cfg.init,
            });
        }
    }
    let multi = MultiProgress::with_draw_target(if cfg.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>18} [{bar:30}] {pos:>5}/{len} steps {elapsed:>4} eta {eta:>3} {msg}",
    )
    .map_err(|e| ReproError::Config(format!("progress template: {e}")))?
    .progress_chars("=> ");
    let bars: Vec<ProgressBar> = jobs
        .iter()
        .map(|j| {
            let b = multi.add(ProgressBar::new(cfg.steps() as u64));
            b.set_style(style.clone());
            b.set_prefix(format!("{} s{}", j.method.name(), j.seed));
            b
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RunLog>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let workers = if crate::lm::run::one_run_at_a_time(cfg.backend) {
        1
    } else {
        cfg.jobs.min(jobs.len())
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(spec) = jobs.get(i) else { break };
                let out = data.run(cfg, spec, &bars[i]);
                match &out {
                    Ok(log) => {
                        let last = log.last().map(|p| p.val_loss).unwrap_or(f64::NAN);
                        bars[i].finish_with_message(format!("val {last:.4}"));
                    }
                    Err(e) => bars[i].abandon_with_message(format!("failed: {e}")),
                }
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(out);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| ReproError::Config("a training thread panicked".into()))?;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ReproError::Config("a run did not finish".into()))))
        .collect()
}

/// What an experiment produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every run.
    pub runs: Vec<RunLog>,
    /// One summary row per method.
    pub summary: Vec<crate::report::MethodSummary>,
    /// The summary as Markdown (also in `summary.md`).
    pub table: String,
    /// Every file written.
    pub files: Vec<PathBuf>,
    /// Whether the plots carry labels (a font was found).
    pub plots_labelled: bool,
    /// Wall-clock seconds of the whole experiment.
    pub wall_secs: f64,
}

/// Runs the whole experiment and writes `summary.md`, `results.json`, `log.csv` and the plots
/// into `cfg.out_dir`.
pub fn run_experiment(cfg: &ExperimentConfig) -> Result<Outcome> {
    let started = std::time::Instant::now();
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(crate::error::io_err(&cfg.out_dir))?;
    let data = TaskData::load(cfg)?;
    let runs = train_loaded(cfg, &data)?;
    let summary = crate::report::summarize(&runs, &cfg.methods, &cfg.coefs, cfg.init);
    let loss_name = match cfg.task {
        TaskSpec::Synthetic { .. } => "MSE",
        TaskSpec::Text { .. } => "CE (nats/byte)",
        TaskSpec::Lm { .. } => "bits/byte",
    };
    let mut table = crate::report::markdown_table(&summary, loss_name);
    let layer_rows = crate::layers::summarize_layers(&runs, &cfg.methods);
    if !layer_rows.is_empty() {
        table.push_str("\nPer MoE layer (mean ± std over seeds):\n\n");
        table.push_str(&crate::layers::markdown_table(&layer_rows));
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let mut files = Vec::new();
    let dir = &cfg.out_dir;
    let md = format!(
        "# simbal-repro results\n\n{}- wall time: {:.0} s\n\n{}\n\
         Columns: final values are at the last step, mean ± sample std over seeds. Tokens and speed-up compare each run \
         with the same seed's Switch run: the first point (interpolated) where the validation loss reaches Switch's final \
         validation loss, and Switch's own first crossing over it. Min PES is the lowest PES over the logged points after step 0 (freshly initialised experts are uncorrelated, PES ~ 0). \
         MaxVio (train) is the mean training-batch MaxVio over the second half of training.\n",
        crate::describe::describe_task(cfg, &data, &runs),
        wall_secs,
        table
    );
    let path = dir.join("summary.md");
    crate::report::write_file(&path, &md)?;
    files.push(path);
    let path = dir.join("log.csv");
    crate::report::write_file(&path, &crate::report::csv(&runs))?;
    files.push(path);
    if !layer_rows.is_empty() {
        let path = dir.join("layers.csv");
        crate::report::write_file(&path, &crate::layers::csv(&runs))?;
        files.push(path);
    }
    let path = dir.join("results.json");
    let results = crate::report::Results {
        config: cfg,
        summary: &summary,
        layers: &layer_rows,
        runs: &runs,
    };
    crate::report::write_file(&path, &crate::report::json(&results)?)?;
    files.push(path);
    let plots = crate::plot::plot_all(&runs, dir, cfg.font.as_deref())?;
    files.extend(plots.files);
    Ok(Outcome {
        runs,
        summary,
        table,
        files,
        plots_labelled: plots.labelled,
        wall_secs,
    })
}
