//! Smoke test of the main experiment, the MoE transformer language model: a tiny model, every
//! method, in seconds; every method must lower the validation loss and every file must be
//! written.

mod common;

use common::{assert_written, dir, tiny, write_corpus};
use simbal_repro::experiment::{run_experiment, BackendKind};
use simbal_repro::methods::Method;

#[test]
fn every_method_lowers_the_validation_loss_and_every_file_is_written() {
    let d = dir("smoke");
    let cfg = tiny(d.join("out"), write_corpus(&d), 30);
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
    let names = common::output_files(&["layers.csv"]);
    assert_written(&cfg, &out, &names);
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
    let mut cfg = tiny(d.join("a"), corpus.clone(), 30);
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
    let mut cfg = tiny(d.join("out"), write_corpus(&d), 30);
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
