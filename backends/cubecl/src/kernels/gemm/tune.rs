//! Opt-in autotune of the GEMM path: the first product of each shape times every path that can
//! take it (the skinny kernels, cubek's `SimpleUnit` and `DoubleUnit`, the own tiles) on the
//! device, and every later product of that shape runs the fastest.
//!
//! Off by default ([`super::gemm_path`]'s fixed choice): timing picks by run-time noise, so two
//! processes (two runs, two MPI ranks) may choose differently and their products differ in the
//! last bits, against this crate's run-to-run determinism; and the first step of each shape
//! waits for the device once per candidate run. cubek's tensor-core routine is never a
//! candidate (it reads f32 as tf32). Where it helps: on a card whose best routine per shape the
//! fixed thresholds (set on lavapipe and one H200 run) do not know.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cubecl::prelude::*;

use super::{gemm_with, skinny_fits, CubekStrategy, GemmDims, GemmPath};
use crate::kernels::{DevBuf, KernelError};

/// Timed runs of each candidate after its first (which compiles it).
const RUNS: usize = 3;

/// A product's shape as the tuner keys it (alpha and beta only matter as `beta == 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// `A` stored `k x m`.
    pub trans_a: bool,
    /// `B` stored `n x k`.
    pub trans_b: bool,
    /// `beta == 0` (the epilogue overwrites).
    pub overwrite: bool,
}

impl GemmShape {
    /// The key of `g`.
    pub fn of(g: &GemmDims) -> Self {
        Self {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            overwrite: g.beta == 0.0,
        }
    }
}

/// The paths a tuner times for `g` (those that can take it).
pub fn candidates(g: &GemmDims) -> Vec<GemmPath> {
    let mut c = Vec::with_capacity(4);
    if skinny_fits(g) {
        c.push(GemmPath::Skinny);
    }
    c.push(GemmPath::Cubek(CubekStrategy::SimpleUnit));
    c.push(GemmPath::Cubek(CubekStrategy::DoubleUnit));
    c.push(GemmPath::Tiled);
    c
}

/// The tuned choices of one backend (shared by its clones), each with its measured time.
#[derive(Debug, Default)]
pub struct GemmTuner {
    chosen: Mutex<HashMap<GemmShape, (GemmPath, Duration)>>,
}

impl GemmTuner {
    /// An empty tuner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tuned shapes so far: each shape's path and its best time.
    pub fn choices(&self) -> Vec<(GemmShape, GemmPath, Duration)> {
        let map = self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(s, &(p, t))| (*s, p, t)).collect();
        v.sort_by_key(|(s, ..)| (s.m, s.n, s.k, s.trans_a, s.trans_b, s.overwrite));
        v
    }

    /// The path for `g`: the cached choice, or (first product of the shape) the fastest
    /// candidate, timed on scratch output (`c` is not touched here).
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] when no candidate runs `g`; [`KernelError::Device`] when a
    /// device sync fails.
    pub fn path<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        g: &GemmDims,
        a: &DevBuf<f32>,
        b: &DevBuf<f32>,
    ) -> Result<GemmPath, KernelError> {
        if g.m == 0 || g.n == 0 || g.k == 0 {
            return Ok(super::gemm_path(g)); // no kernel runs: nothing to time
        }
        let shape = GemmShape::of(g);
        if let Some(&(p, _)) = self
            .chosen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shape)
        {
            return Ok(p);
        }
        let scratch = DevBuf::<f32>::empty(client, g.m * g.n);
        super::super::util::fill_zero(client, &scratch)?;
        let mut best: Option<(GemmPath, Duration)> = None;
        for path in candidates(g) {
            // A path that refuses the product at setup enqueued nothing: not a candidate.
            match gemm_with(client, g, path, a, b, &scratch) {
                Err(KernelError::Unsupported(_)) => continue,
                other => other?,
            }
            sync(client)?;
            let mut t = Duration::MAX;
            for _ in 0..RUNS {
                let start = Instant::now();
                gemm_with(client, g, path, a, b, &scratch)?;
                sync(client)?;
                t = t.min(start.elapsed());
            }
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((path, t));
            }
        }
        let (path, t) =
            best.ok_or_else(|| KernelError::Unsupported(format!("no GEMM path takes {g:?}")))?;
        self.chosen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shape, (path, t));
        Ok(path)
    }
}

fn sync<R: Runtime>(client: &ComputeClient<R>) -> Result<(), KernelError> {
    crate::counters::waited();
    cubecl::future::block_on(client.sync()).map_err(|e| KernelError::Device(format!("{e:?}")))
}
