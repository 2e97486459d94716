//! `simbal-repro`: does SimBal beat the Switch loss? Trains small MoE models under each balancing
//! method and writes a table, the logged data and plots.

use clap::{Parser, ValueEnum};
use simbal_repro::experiment::{run_experiment, BackendKind, ExperimentConfig, TaskSpec};
use simbal_repro::methods::{InitPolicy, Method};
use simbal_repro::{ReproError, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// CPU: simbal-faer routers (the language model: burn's NdArray<f32> around them).
    Faer,
    /// The scalar reference backend of simbal-core (first-edition tasks only).
    Reference,
    /// The language model on burn's wgpu backend (build with --features wgpu).
    Wgpu,
    /// The language model on burn's CUDA backend (build with --features cuda).
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TaskArg {
    /// The MoE transformer language model on real text (the main experiment).
    Lm,
    /// First edition: one MoE layer on the synthetic clustered regression task.
    Synthetic,
    /// First edition: one MoE layer as a byte model with a fixed context on --corpus FILE.
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PresetArg {
    /// Sized for 15 minutes on a 2-core machine, build included.
    Default,
    /// The same model on ten times the tokens.
    Large,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InitArg {
    /// SimBal methods start from an orthogonal router, the others from a Gaussian one (the paper).
    Paper,
    /// Every method starts orthogonal.
    Orthogonal,
    /// Every method starts Gaussian.
    Gaussian,
}

/// Trains small Mixture-of-Experts models under each load-balancing method (none, Switch LBL,
/// SimBal and its variants, aux-loss-free bias) over several seeds, and reports convergence speed,
/// load balance and expert redundancy (PES) in a table, a CSV/JSON log and plots.
///
/// By default a 4-block MoE transformer language model (burn, routers through simbal-burn) on
/// text extracted from the system's manual pages; --task synthetic runs the first edition.
#[derive(Debug, Parser)]
#[command(name = "simbal-repro", version)]
struct Args {
    /// The task.
    #[arg(long, value_enum, default_value = "lm")]
    task: TaskArg,
    /// Language model: the configuration.
    #[arg(long, value_enum, default_value = "default")]
    preset: PresetArg,
    /// Text file (language model: instead of the manual pages; required by --task bytes).
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Language model: bytes of text extracted from the manual pages [default: 6 MiB].
    #[arg(long)]
    corpus_bytes: Option<usize>,
    /// Language model: transformer blocks [default: 4].
    #[arg(long)]
    layers: Option<usize>,
    /// Language model: residual width [default: 64].
    #[arg(long)]
    d_model: Option<usize>,
    /// Language model: attention heads [default: 4].
    #[arg(long)]
    heads: Option<usize>,
    /// Language model: validation windows [default: 128].
    #[arg(long)]
    val_windows: Option<usize>,
    /// Comma-separated methods, or "all": none, switch, simbal, simbal-fro, simbal-sf, bias,
    /// bias+simbal ("all" for the language model leaves out simbal-fro).
    #[arg(long, default_value = "all")]
    methods: String,
    /// Seeds per method (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Optimiser steps per run [default: lm 400 (large 4000); synthetic 2500; bytes 800].
    #[arg(long)]
    steps: Option<usize>,
    /// Sequences per batch [default: lm 16; else 8].
    #[arg(long)]
    batch_seqs: Option<usize>,
    /// Tokens per sequence [default: lm 64; else 32].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Adam (peak) learning rate [default: lm 5e-3; else 3e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// Steps between logged points [default: lm 25 (large 125); synthetic 50; bytes 25].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Number of experts E [default: lm 16; else 8].
    #[arg(long)]
    experts: Option<usize>,
    /// Experts per token k [default: 2].
    #[arg(long)]
    top_k: Option<usize>,
    /// Hidden width of each expert [default: lm 64; synthetic 32; bytes 64].
    #[arg(long)]
    hidden: Option<usize>,
    /// Expert capacity factor (default: no capacity limit).
    #[arg(long)]
    capacity_factor: Option<f64>,
    /// Synthetic task: token width D [default: 64].
    #[arg(long)]
    dim: Option<usize>,
    /// Synthetic task: number of clusters [default: 32].
    #[arg(long)]
    clusters: Option<usize>,
    /// Synthetic task: clusters mixed in a sequence [default: 4].
    #[arg(long)]
    clusters_per_seq: Option<usize>,
    /// Synthetic task: popularity skew of the clusters, 0 = uniform [default: 0.5].
    #[arg(long)]
    zipf: Option<f64>,
    /// Synthetic task: norm of a direction shared by every token [default: 6].
    #[arg(long)]
    shared_mean: Option<f64>,
    /// Synthetic task: per-coordinate noise of a token around its cluster centre [default: 0.5].
    #[arg(long)]
    noise: Option<f64>,
    /// Synthetic task: fix the task's seed (default: each run's seed draws its own task).
    #[arg(long)]
    task_seed: Option<u64>,
    /// Bytes task: bytes of context.
    #[arg(long, default_value_t = 4)]
    context: usize,
    /// Bytes task: embedding width per context byte [default: 16].
    #[arg(long)]
    emb: Option<usize>,
    /// Bytes task: width of the MoE layer's output, the softmax head's input [default: 64].
    #[arg(long)]
    width: Option<usize>,
    /// Held-out fraction: of a --corpus file's end; of the manual pages' documents
    /// [default: lm 0.05; bytes 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Switch LBL coefficient alpha.
    #[arg(long, default_value_t = 0.01)]
    lbl_alpha: f64,
    /// SimBal coefficient lambda (all norms).
    #[arg(long, default_value_t = 0.1)]
    simbal_lambda: f64,
    /// Aux-loss-free bias update rate u.
    #[arg(long, default_value_t = 1e-3)]
    bias_rate: f64,
    /// Router initialisation.
    #[arg(long, value_enum, default_value = "paper")]
    init: InitArg,
    /// simbal backend for the router.
    #[arg(long, value_enum, default_value = "faer")]
    backend: BackendArg,
    /// Runs trained at once (default: available cores; one on a GPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "repro-out")]
    out: PathBuf,
    /// TrueType font for plot labels (default: a system font).
    #[arg(long, value_name = "TTF")]
    font: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

/// `set_given!(args => dst { field, field = arg, .. })`: each `dst.field` takes the optional
/// command-line value `args.field` (or `args.arg`) when one was given, else keeps its default.
macro_rules! set_given {
    ($args:ident => $dst:ident { $($field:ident $(= $arg:ident)?),* $(,)? }) => {
        $(if let Some(v) = set_given!(@arg $args, $field $(, $arg)?) {
            $dst.$field = v;
        })*
    };
    (@arg $args:ident, $field:ident) => { $args.$field };
    (@arg $args:ident, $field:ident, $arg:ident) => { $args.$arg };
}

fn config(a: Args) -> Result<ExperimentConfig> {
    if a.task != TaskArg::Lm && a.preset != PresetArg::Default {
        return Err(ReproError::Config(
            "--preset is for the language model".into(),
        ));
    }
    let mut cfg = match (a.task, a.corpus.clone()) {
        (TaskArg::Lm, _) => ExperimentConfig::default_lm(),
        (TaskArg::Bytes, Some(corpus)) => ExperimentConfig::default_text(corpus),
        (TaskArg::Bytes, None) => {
            return Err(ReproError::Config(
                "--task bytes needs --corpus FILE".into(),
            ))
        }
        (TaskArg::Synthetic, _) => ExperimentConfig::default_synthetic(),
    };
    match &mut cfg.task {
        TaskSpec::Lm {
            corpus,
            corpus_config,
            train,
        } => {
            if a.preset == PresetArg::Large {
                *train = simbal_repro::lm::run::large_config();
            }
            *corpus = a.corpus.clone();
            set_given!(a => corpus_config { val_fraction, target_bytes = corpus_bytes });
            set_given!(a => train { steps, batch_seqs, lr, eval_every, val_windows });
            let s = &mut train.shape;
            set_given!(a => s { seq_len, experts, layers, d_model, heads, k = top_k, expert_hidden = hidden });
        }
        TaskSpec::Text {
            context,
            val_fraction,
            ..
        } => {
            *context = a.context;
            if let Some(v) = a.val_fraction {
                *val_fraction = v;
            }
        }
        TaskSpec::Synthetic { config, task_seed } => {
            set_given!(a => config { dim, clusters, clusters_per_seq, zipf, shared_mean, noise });
            *task_seed = a.task_seed;
        }
    }
    if !matches!(cfg.task, TaskSpec::Lm { .. }) {
        let t = &mut cfg.train;
        set_given!(a => t { steps, batch_seqs, seq_len, eval_every, experts, hidden, lr });
        set_given!(a => t { k = top_k, text_emb = emb, text_width = width });
        t.capacity_factor = a.capacity_factor;
    } else if a.capacity_factor.is_some() {
        return Err(ReproError::Config(
            "--capacity-factor is for the first edition's tasks".into(),
        ));
    }
    let all: &[Method] = if matches!(cfg.task, TaskSpec::Lm { .. }) {
        &Method::LM
    } else {
        &Method::ALL
    };
    cfg.methods = if a.methods.trim() == "all" {
        all.to_vec()
    } else {
        a.methods
            .split(',')
            .map(Method::parse)
            .collect::<Result<_>>()?
    };
    if a.seeds == 0 {
        return Err(ReproError::Config("--seeds must be >= 1".into()));
    }
    cfg.seeds = (a.first_seed..a.first_seed + a.seeds).collect();
    cfg.coefs.lbl_alpha = a.lbl_alpha;
    cfg.coefs.simbal_lambda = a.simbal_lambda;
    cfg.coefs.bias_rate = a.bias_rate;
    cfg.init = match a.init {
        InitArg::Paper => InitPolicy::Paper,
        InitArg::Orthogonal => InitPolicy::Orthogonal,
        InitArg::Gaussian => InitPolicy::Gaussian,
    };
    cfg.backend = match a.backend {
        BackendArg::Faer => BackendKind::Faer,
        BackendArg::Reference => BackendKind::Reference,
        BackendArg::Wgpu => BackendKind::Wgpu,
        BackendArg::Cuda => BackendKind::Cuda,
    };
    if let Some(j) = a.jobs {
        cfg.jobs = j;
    }
    cfg.out_dir = a.out;
    cfg.font = a.font;
    cfg.progress = !a.no_progress;
    Ok(cfg)
}

fn main() -> ExitCode {
    let run = || -> Result<()> {
        let cfg = config(Args::parse())?;
        cfg.validate()?;
        let runs = cfg.methods.len() * cfg.seeds.len();
        eprintln!(
            "simbal-repro: {} runs ({} methods x {} seeds), {} steps each, {} at a time, backend {}",
            runs,
            cfg.methods.len(),
            cfg.seeds.len(),
            cfg.steps(),
            cfg.jobs,
            cfg.backend.name()
        );
        for m in &cfg.methods {
            eprintln!("  {:<12} {}", m.name(), m.describe(&cfg.coefs, cfg.init));
        }
        let out = run_experiment(&cfg)?;
        println!("\n{}", out.table);
        println!("wall time {:.0} s; written:", out.wall_secs);
        if let Some(line) = simbal_repro::lm::run::large_estimate(&cfg, &out.runs) {
            println!("{line}");
        }
        for f in &out.files {
            println!("  {}", f.display());
        }
        if !out.plots_labelled {
            println!("note: no TrueType font found (pass --font FILE.ttf): plots have lines but no labels");
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
