//! Opt-in GEMM autotune: a router step on an autotuned backend gives the untuned step's values
//! (to the SPEC's f32 tolerance), every product shape gets one of its candidate paths, the
//! choice is made once per shape (a later step waits once, as without autotune) and clones
//! share it.

mod common;

use common::gpu;
use simbal_core::config::{LblConfig, ZLossConfig};
use simbal_core::{
    orthogonal_init, LossConfig, Memory, Router, RouterConfig, SimBalConfig, WeightLayout,
};
use simbal_cubecl::kernels::gemm::{candidates, GemmDims};
use simbal_cubecl::{counters, CubeclBackend};

type B = CubeclBackend<common::R>;

/// The losses and `dX` of one step on `be`.
fn step(be: &B, (n, d, e, k): (usize, usize, usize, usize)) -> (Vec<f32>, [f32; 3]) {
    let x = be.upload(&common::Rng::new(1).vec(n * d)).unwrap();
    let r: Vec<f32> = orthogonal_init(WeightLayout::DxE, d, e, 3).unwrap();
    let r = be.upload(&r).unwrap();
    let dw = be.upload(&common::Rng::new(2).vec(n * k)).unwrap();
    let losses = LossConfig::none()
        .with_simbal(SimBalConfig::default())
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default());
    let mut router = Router::new(be.clone(), RouterConfig::new(e, k)).unwrap();
    let mut pass = router.forward(&x, &r, None).unwrap();
    let g = pass.backward(&dw, &losses, None).unwrap();
    let mut dx = vec![0.0; n * d];
    be.download(g.dx, &mut dx).unwrap();
    let l = g.losses;
    (dx, [l.lbl, l.z_loss, l.simbal])
}

#[test]
fn autotuned_steps_match_and_tune_once() {
    let Some(plain) = gpu() else { return };
    let tuned = plain.clone().with_gemm_autotune();
    assert!(plain.gemm_choices().is_empty(), "autotune is opt-in");
    for shape in [(128, 64, 32, 4), (96, 80, 8, 2)] {
        let (want_dx, want) = step(&plain, shape);
        let (dx, got) = step(&tuned, shape);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{shape:?}: {got:?} vs {want:?}"
            );
        }
        let scale = want_dx.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (g, w) in dx.iter().zip(&want_dx) {
            assert!((g - w).abs() <= 1e-4 * scale, "{shape:?}: dX {g} vs {w}");
        }
        // Tuned once: the next step on the same shape waits once, as an untuned one.
        let before = counters();
        step(&tuned, shape);
        assert_eq!(
            (counters() - before).waits,
            2,
            "{shape:?}: the step's read and dX's"
        );
    }
    let choices = tuned.gemm_choices();
    assert!(choices.len() >= 6, "{choices:?}");
    for (s, path, t) in &choices {
        let g = GemmDims {
            m: s.m,
            n: s.n,
            k: s.k,
            trans_a: s.trans_a,
            trans_b: s.trans_b,
            alpha: 1.0,
            beta: if s.overwrite { 0.0 } else { 1.0 },
        };
        assert!(candidates(&g).contains(path), "{s:?}: {path:?}");
        assert!(*t > std::time::Duration::ZERO);
    }
    // Clones share the tuner; the untuned backend never tuned.
    assert_eq!(tuned.clone().gemm_choices().len(), choices.len());
    assert!(plain.gemm_choices().is_empty());
}
