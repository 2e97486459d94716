//! The language model on burn's wgpu backend (lavapipe in CI; `.ci/run` runs this file with
//! `--features wgpu`): a tiny model trains on the GPU path, routers through simbal-cubecl on
//! burn's own client, and lowers its validation loss under SimBal and Switch. Without an
//! adapter it prints a note and passes, unless `CI` is set.
#![cfg(feature = "wgpu")]

mod common;

use common::{dir, tiny, write_corpus};
use simbal_repro::experiment::{run_experiment, BackendKind};
use simbal_repro::lm::run::device_available;
use simbal_repro::methods::Method;

#[test]
fn the_language_model_trains_on_wgpu() {
    if !device_available(BackendKind::Wgpu) {
        assert!(std::env::var_os("CI").is_none(), "no wgpu adapter under CI");
        eprintln!("no wgpu adapter: skipped");
        return;
    }
    let d = dir("wgpu");
    let mut cfg = tiny(d.join("out"), write_corpus(&d), 12);
    cfg.methods = vec![Method::Switch, Method::BiasSimBal];
    cfg.seeds = vec![0];
    cfg.backend = BackendKind::Wgpu;
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
    let _ = std::fs::remove_dir_all(&d);
}
