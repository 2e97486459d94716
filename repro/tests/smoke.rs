//! Smoke test: a tiny experiment of every method on both tasks, in seconds even in debug mode.
//! Every method must learn (validation loss falls) and every output file must be written.

mod common;

use simbal_repro::experiment::{run_experiment, BackendKind, ExperimentConfig, TaskSpec};
use simbal_repro::methods::Method;
use simbal_repro::task::SyntheticConfig;
use std::path::PathBuf;

fn out_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("simbal-repro-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tiny(out: PathBuf) -> ExperimentConfig {
    let mut cfg = ExperimentConfig::default_synthetic();
    cfg.task = TaskSpec::Synthetic {
        config: SyntheticConfig {
            dim: 12,
            out_dim: 4,
            clusters: 6,
            clusters_per_seq: 2,
            teacher_hidden: 4,
            ..SyntheticConfig::default()
        },
        task_seed: None,
    };
    let t = &mut cfg.train;
    t.steps = 80;
    t.batch_seqs = 4;
    t.seq_len = 8;
    t.eval_every = 20;
    t.val_seqs = 4;
    t.pes_tokens = 16;
    t.experts = 4;
    t.k = 2;
    t.hidden = 8;
    t.text_width = 8;
    t.text_emb = 4;
    t.lr = 1e-2;
    cfg.seeds = vec![0, 1];
    cfg.jobs = 2;
    cfg.progress = false;
    cfg.out_dir = out;
    cfg
}

fn check(cfg: &ExperimentConfig) {
    let out = run_experiment(cfg).unwrap();
    assert_eq!(out.runs.len(), Method::ALL.len() * cfg.seeds.len());
    for r in &out.runs {
        let first = r.points.first().unwrap();
        let last = r.last().unwrap();
        assert_eq!(last.step, cfg.train.steps);
        assert!(
            last.val_loss < 0.9 * first.val_loss,
            "{} seed {} did not learn: validation loss {} -> {}",
            r.method,
            r.seed,
            first.val_loss,
            last.val_loss
        );
    }
    assert_eq!(out.summary.len(), Method::ALL.len());
    for m in Method::ALL {
        assert!(
            out.table.contains(&format!("| {} |", m.name())),
            "{} missing from the table",
            m.name()
        );
    }
    let names = common::output_files(&[]);
    common::assert_written(cfg, &out, &names);
    let csv = std::fs::read_to_string(cfg.out_dir.join("log.csv")).unwrap();
    let points: usize = out.runs.iter().map(|r| r.points.len()).sum();
    assert_eq!(csv.lines().count(), points + 1);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["runs"].as_array().map(|a| a.len()),
        Some(out.runs.len())
    );
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}

#[test]
fn every_method_learns_the_synthetic_task_and_every_file_is_written() {
    check(&tiny(out_dir("synthetic")));
}

#[test]
fn every_method_learns_the_text_task_on_the_reference_backend() {
    let dir = out_dir("text");
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.txt");
    let text = "It was the best of times, it was the worst of times, it was the age of wisdom, \
                it was the age of foolishness, it was the epoch of belief. "
        .repeat(40);
    std::fs::write(&corpus, text).unwrap();
    let mut cfg = tiny(dir.join("out"));
    cfg.task = TaskSpec::Text {
        corpus,
        context: 3,
        val_fraction: 0.1,
    };
    cfg.backend = BackendKind::Reference;
    check(&cfg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_corpus_is_an_error_naming_the_file() {
    let mut cfg = tiny(out_dir("missing"));
    cfg.task = TaskSpec::Text {
        corpus: PathBuf::from("/nonexistent/simbal-corpus.txt"),
        context: 3,
        val_fraction: 0.1,
    };
    let err = run_experiment(&cfg).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/simbal-corpus.txt"), "{err}");
    let _ = std::fs::remove_dir_all(&cfg.out_dir);
}
