//! The language model on burn's wgpu backend (lavapipe in CI; `.ci/run` runs this file with
//! `--features wgpu`): a tiny model trains on the GPU path, routers through simbal-cubecl on
//! burn's own client, and lowers its validation loss under SimBal and Switch. Without an
//! adapter it prints a note and passes, unless `CI` is set.
#![cfg(feature = "wgpu")]

use simbal_repro::experiment::{run_experiment, BackendKind, ExperimentConfig, TaskSpec};
use simbal_repro::lm::model::LmShape;
use simbal_repro::lm::run::device_available;
use simbal_repro::methods::Method;

#[test]
fn the_language_model_trains_on_wgpu() {
    if !device_available(BackendKind::Wgpu) {
        assert!(std::env::var_os("CI").is_none(), "no wgpu adapter under CI");
        eprintln!("no wgpu adapter: skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("simbal-repro-lm-wgpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let corpus = dir.join("corpus.txt");
    let text = "the router sends each token to two experts while similar tokens stay together. "
        .repeat(300);
    std::fs::write(&corpus, text).expect("corpus");
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
        train.steps = 12;
        train.batch_seqs = 4;
        train.lr = 1e-2;
        train.warmup_steps = 2;
        train.eval_every = 6;
        train.val_windows = 4;
        train.val_chunk = 4;
        train.pes_tokens = 16;
    }
    cfg.methods = vec![Method::Switch, Method::BiasSimBal];
    cfg.seeds = vec![0];
    cfg.backend = BackendKind::Wgpu;
    cfg.progress = false;
    cfg.out_dir = dir.join("out");
    let out = run_experiment(&cfg).expect("experiment on wgpu");
    for r in &out.runs {
        let (first, last) = (&r.points[0], r.last().expect("points"));
        assert!(
            last.val_loss < 0.9 * first.val_loss,
            "{}: {} -> {}",
            r.method,
            first.val_loss,
            last.val_loss
        );
        assert!(
            r.backend.to_lowercase().contains("wgpu") || r.backend.to_lowercase().contains("cube"),
            "{}",
            r.backend
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
