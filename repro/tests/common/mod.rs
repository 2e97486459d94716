//! What the language-model tests share: a small text and a tiny configuration, and the check
//! that an experiment wrote its files.
#![allow(dead_code)]

use simbal_repro::experiment::{ExperimentConfig, Outcome, TaskSpec};
use simbal_repro::lm::model::LmShape;
use std::path::{Path, PathBuf};

/// A fresh temporary directory for test `name`.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("simbal-repro-lm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A small English text with enough variety that a model learns something in a few steps.
pub fn write_corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "router", "sends", "each", "token", "to", "two", "experts", "and", "a", "loss",
        "keeps", "their", "load", "balanced", "while", "similar", "tokens", "stay", "together",
    ];
    let mut text = String::new();
    for i in 0..3000usize {
        text.push_str(words[(i * 7 + i / 13) % words.len()]);
        text.push(if i % 11 == 10 { '.' } else { ' ' });
        if i % 11 == 10 {
            text.push('\n');
        }
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).expect("corpus");
    path
}

/// The language model shrunk to seconds: 2 blocks, d_model 16, 4 experts top-2, `steps` steps
/// with evaluations every `steps / 3`.
pub fn tiny(out: PathBuf, corpus: PathBuf, steps: usize) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::default_lm();
    if let TaskSpec::Lm {
        corpus: c,
        corpus_config,
        train,
    } = &mut cfg.task
    {
        *c = Some(corpus);
        corpus_config.val_fraction = 0.1;
        train.shape = LmShape {
            vocab: 256,
            seq_len: 16,
            d_model: 16,
            heads: 2,
            layers: 2,
            experts: 4,
            k: 2,
            expert_hidden: 16,
        };
        train.steps = steps;
        train.batch_seqs = 4;
        train.lr = 1e-2;
        train.warmup_steps = 3;
        train.eval_every = steps / 3;
        train.val_windows = 8;
        train.val_chunk = 4;
        train.pes_tokens = 16;
    }
    cfg.seeds = vec![0];
    cfg.jobs = 2;
    cfg.progress = false;
    cfg.out_dir = out;
    cfg
}

/// The files every experiment writes (summary, CSV, JSON, a PNG and an SVG per plotted
/// metric), plus `extra`.
pub fn output_files(extra: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = ["summary.md", "log.csv", "results.json"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    for m in &simbal_repro::plot::METRICS {
        names.push(format!("{}.png", m.file));
        names.push(format!("{}.svg", m.file));
    }
    names
}

/// Every file in `names` exists under `cfg.out_dir`, is not empty, and is in `out.files`.
pub fn assert_written(cfg: &ExperimentConfig, out: &Outcome, names: &[String]) {
    for n in names {
        let p = cfg.out_dir.join(n);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{} missing or empty", p.display());
        assert!(out.files.contains(&p), "{} not reported", p.display());
    }
}
