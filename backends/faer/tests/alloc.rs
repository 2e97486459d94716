//! A training step of a shape seen before allocates nothing: a counting global allocator around
//! the later steps `router.forward(..)?.backward(..)?` (and the router's statistics, through the
//! backend's `routing_stats`), for f32 and f64, with every loss, capacity and a selection bias,
//! and a masked batch (sigmoid scores, the normalised LBL per `[S, B]` sequence), run
//! sequentially and split across rayon blocks.
//!
//! This binary holds a single test so no other test's allocations are counted. The steps run on
//! a worker of a dedicated rayon pool: rayon itself allocates now and then (a block of its global
//! injector queue every 63 jobs) when work is injected from a thread outside the pool, which is
//! rayon's cost, not this backend's.

mod common;

use common::gemm;
use simbal_core::{
    orthogonal_init, Batch, DropPolicy, Gemm, LblConfig, LblLevel, LossConfig, Router,
    RouterConfig, RoutingStats, ScoreFn, SeqLayout, SimBalConfig, SimBalNorm, WeightLayout,
    ZLossConfig,
};
use simbal_faer::{Faer, FaerElem, Par};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) made by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let s = region.change();
    s.allocations + s.reallocations
}

fn steps_allocate_nothing<T: FaerElem>(par: Par) {
    let (n, d, e, k) = (2048, 64, 32, 4);
    let x: Vec<T> = (0..n * d)
        .map(|i| T::of(((i * 7919 % 1013) as f64 - 506.0) / 300.0))
        .collect();
    let bias: Vec<T> = (0..e).map(|c| T::of(c as f64 * 1e-3)).collect();
    let dw: Vec<T> = (0..n * k)
        .map(|i| T::of(((i % 13) as f64 - 6.0) / 6.0))
        .collect();
    let seq = LblConfig {
        level: LblLevel::sequences(256),
        ..LblConfig::default()
    };
    let global = LblConfig {
        level: LblLevel::GlobalBatch,
        ..LblConfig::default()
    };
    let scale_free = SimBalConfig {
        lambda: 0.1,
        norm: SimBalNorm::ScaleFree,
    };
    // Padding: every seventh token masked (sequences of 256 keep valid tokens).
    let mask: Vec<u32> = (0..n).map(|t| u32::from(t % 7 != 3)).collect();
    let seq_major = LblConfig {
        level: LblLevel::Sequence(SeqLayout::SequenceMajor { batch: 8 }),
        ..LblConfig::default()
    };
    let cases = [
        (
            RouterConfig::new(e, k).with_capacity(1.25, DropPolicy::Probs),
            LossConfig::simbal()
                .with_lbl(seq)
                .with_z_loss(ZLossConfig::default()),
            false,
        ),
        (
            RouterConfig::new(e, k)
                .with_layout(WeightLayout::ExD)
                .with_groups(4, 2),
            LossConfig::none().with_simbal(scale_free).with_lbl(global),
            false,
        ),
        (
            RouterConfig::new(e, k).with_score(ScoreFn::Sigmoid),
            LossConfig::simbal()
                .with_lbl(seq_major)
                .with_z_loss(ZLossConfig::default()),
            true,
        ),
    ];
    for (cfg, losses, masked) in cases {
        let r: Vec<T> = orthogonal_init(cfg.layout, d, e, 3).unwrap();
        let mut router = Router::new(Faer::<T>::with_par(par), cfg).unwrap();
        let mut stats = RoutingStats::empty(e);
        let global = RoutingStats {
            counts: vec![64; e],
            routed_counts: vec![64; e],
            score_sums: vec![64.0; e],
            tokens: 512,
            dropped: 0,
        };
        let mut step = || {
            let batch = Batch::new().bias(&bias[..]);
            let batch = if masked { batch.mask(&mask[..]) } else { batch };
            router
                .forward_batch(&x, &r, batch)
                .unwrap()
                .backward(&dw, &losses, Some(&global))
                .unwrap();
            router.stats_into(&mut stats).unwrap();
        };
        // First steps size the workspace and warm rayon and faer's per-thread packing buffers.
        for _ in 0..3 {
            step();
        }
        for i in 0..10 {
            let count = allocations(&mut step);
            assert_eq!(
                count,
                0,
                "{} {par:?} {cfg:?}: step {i} after warm-up allocated {count} times",
                T::NAME
            );
        }
    }
}

/// SimBal's Gram matrix `R^T R` (the symmetric path, split in two blocks under rayon) allocates
/// nothing once warm.
fn gram_allocates_nothing<T: FaerElem>(par: Par) {
    let be = Faer::<T>::with_par(par);
    let (d, e) = (1024, 256);
    let r = vec![T::one(); d * e];
    let mut c = vec![T::zero(); e * e];
    let g = Gemm::new(e, e, d).ta();
    gemm(&be, &g, &r, &r, &mut c).unwrap();
    let n = allocations(|| {
        for _ in 0..3 {
            gemm(&be, &g, &r, &r, &mut c).unwrap();
        }
    });
    assert_eq!(n, 0, "Gram GEMM {} {par:?} allocated {n} times", T::NAME);
    assert!(c.iter().all(|&v| v == T::of_usize(d)), "Gram of ones");
}

/// One sequential GEMM large enough for faer's packing kernel.
fn warm_gemm<T: FaerElem>() {
    let be = Faer::<T>::with_par(Par::Seq);
    let a = vec![T::one(); 128 * 128];
    let mut c = vec![T::zero(); 128 * 128];
    gemm(&be, &Gemm::new(128, 128, 128), &a, &a, &mut c).unwrap();
}

#[test]
fn repeated_steps_allocate_nothing() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    // Every worker packs GEMM operands into a buffer faer allocates on the thread's first GEMM:
    // warm them all, in both types, as many steps would.
    pool.broadcast(|_| {
        warm_gemm::<f32>();
        warm_gemm::<f64>();
    });
    pool.install(|| {
        for par in [Par::Seq, Par::rayon(4)] {
            steps_allocate_nothing::<f32>(par);
            steps_allocate_nothing::<f64>(par);
            gram_allocates_nothing::<f32>(par);
            gram_allocates_nothing::<f64>(par);
        }
    });
}
