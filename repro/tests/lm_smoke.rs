//! Smoke test of the main experiment, the MoE transformer language model: a tiny model, every
//! method, in seconds; every method must lower the validation loss and every file must be
//! written.

use simbal_repro::experiment::{run_experiment, BackendKind, ExperimentConfig, TaskSpec};
use simbal_repro::lm::model::LmShape;
use simbal_repro::methods::Method;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("simbal-repro-lm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A small English text with enough variety that a model can learn something in a few steps.
fn write_corpus(dir: &std::path::Path) -> PathBuf {
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

fn tiny(out: PathBuf, corpus: PathBuf) -> ExperimentConfig {
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
        train.steps = 30;
        train.batch_seqs = 4;
        train.lr = 1e-2;
        train.warmup_steps = 3;
        train.eval_every = 10;
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

#[test]
fn every_method_lowers_the_validation_loss_and_every_file_is_written() {
    let d = dir("smoke");
    let cfg = tiny(d.join("out"), write_corpus(&d));
    let out = run_experiment(&cfg).expect("experiment");
    assert_eq!(out.runs.len(), Method::LM.len());
    for r in &out.runs {
        let (first, last) = (&r.points[0], r.last().expect("points"));
        assert_eq!(last.step, 30);
        assert_eq!(last.layers.len(), 2, "{}: per-layer metrics", r.method);
        assert!(
            last.val_loss < 0.8 * first.val_loss,
            "{}: validation loss {} -> {} bits/byte",
            r.method,
            first.val_loss,
            last.val_loss
        );
        assert!(first.consistency.is_none() && last.consistency.is_some());
        for l in &last.layers {
            assert!(l.pes.is_finite() && l.max_vio.is_finite() && l.seu > 0.0);
        }
    }
    // SimBal keeps its orthogonally initialised routers near orthogonal; Switch starts Gaussian.
    let orth = |m: &str| {
        out.runs
            .iter()
            .find(|r| r.method == m)
            .and_then(|r| r.last())
            .map(|p| p.orth_max)
    };
    assert!(
        orth("simbal") < orth("switch"),
        "{:?} vs {:?}",
        orth("simbal"),
        orth("switch")
    );
    for m in Method::LM {
        assert!(
            out.table.contains(&format!("| {} |", m.name())),
            "{}",
            out.table
        );
        assert!(
            out.table.contains(&format!("| {} | 1 |", m.name())),
            "per-layer row"
        );
    }
    let names = [
        "summary.md",
        "log.csv",
        "layers.csv",
        "results.json",
        "val_loss.png",
        "val_loss.svg",
        "max_vio.png",
        "max_vio.svg",
        "pes.png",
        "pes.svg",
        "consistency.png",
        "consistency.svg",
    ];
    for n in names {
        let p = cfg.out_dir.join(n);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{} missing or empty", p.display());
        assert!(out.files.contains(&p), "{} not reported", p.display());
    }
    let layers_csv = std::fs::read_to_string(cfg.out_dir.join("layers.csv")).expect("csv");
    let points: usize = out.runs.iter().map(|r| r.points.len()).sum();
    assert_eq!(layers_csv.lines().count(), 1 + 2 * points);
    let summary = std::fs::read_to_string(cfg.out_dir.join("summary.md")).expect("summary");
    assert!(
        summary.contains("bits/byte") && summary.contains("tokens/s"),
        "{summary}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cfg.out_dir.join("results.json")).expect("json"),
    )
    .expect("valid JSON");
    assert_eq!(
        json["runs"].as_array().map(|a| a.len()),
        Some(out.runs.len())
    );
    assert_eq!(
        json["layers"].as_array().map(|a| a.len()),
        Some(2 * Method::LM.len())
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let d = dir("determinism");
    let corpus = write_corpus(&d);
    let mut cfg = tiny(d.join("a"), corpus.clone());
    cfg.methods = vec![Method::Switch, Method::BiasSimBal];
    let a = run_experiment(&cfg).expect("first");
    cfg.out_dir = d.join("b");
    cfg.jobs = 1;
    let b = run_experiment(&cfg).expect("second");
    for (x, y) in a.runs.iter().zip(&b.runs) {
        let vx: Vec<f64> = x.points.iter().map(|p| p.val_loss).collect();
        let vy: Vec<f64> = y.points.iter().map(|p| p.val_loss).collect();
        assert_eq!(vx, vy, "{}: runs differ", x.method);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn backends_the_language_model_cannot_use_are_errors() {
    let d = dir("backends");
    let mut cfg = tiny(d.join("out"), write_corpus(&d));
    cfg.backend = BackendKind::Reference;
    let err = run_experiment(&cfg).expect_err("reference").to_string();
    assert!(err.contains("burn"), "{err}");
    #[cfg(not(feature = "wgpu"))]
    {
        cfg.backend = BackendKind::Wgpu;
        let err = run_experiment(&cfg).expect_err("wgpu").to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
