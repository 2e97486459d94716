//! Opt-in autotune of the GEMM path: the first product of each shape times every path that can
//! take it (the skinny kernels, cubek's `SimpleUnit` and `DoubleUnit`, the own tiles) on the
//! device, and every later product of that shape runs the fastest.
//!
//! Off by default ([`super::gemm_path`]'s fixed choice): timing picks by run-time noise, so two
//! processes (two runs, two MPI ranks) may choose differently and their products differ in the
//! last bits, against this crate's run-to-run determinism; and the first step of each shape
//! waits for the device once per candidate run. A candidate whose first product differs from
//! the default path's (beyond 1e-4 of its largest element) is dropped. cubek's tensor-core routine is never a
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
        // Every candidate must first give the default path's product (to 1e-4 of its largest
        // element): a routine that is wrong for this shape is never chosen. (cubek 0.2's
        // `DoubleUnit` gives wrong values for `dX = dZ R^T` at N 96, D 80, E 8 on lavapipe, a
        // shape `gemm_path` never sends it; its other tested shapes are right, tests/gemm.rs.)
        let Some((_, want)) = first_product(client, g, None, a, b)? else {
            return Ok(super::gemm_path(g));
        };
        let mut best: Option<(GemmPath, Duration)> = None;
        for path in candidates(g) {
            let Some((scratch, got)) = first_product(client, g, Some(path), a, b)? else {
                continue; // refused at setup: nothing was enqueued
            };
            if !agrees(&got, &want) {
                continue;
            }
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

/// `op(A) op(B)` (scaled as `g` says, onto zeros) on `path`, or on [`super::gemm`]'s default
/// with `None`, and its values (one wait); `None` when the path refuses `g` at setup.
#[allow(clippy::type_complexity)]
fn first_product<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    path: Option<GemmPath>,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
) -> Result<Option<(DevBuf<f32>, Vec<f32>)>, KernelError> {
    let out = DevBuf::<f32>::empty(client, g.m * g.n);
    super::super::util::fill_zero(client, &out)?;
    let done = match path {
        Some(p) => gemm_with(client, g, p, a, b, &out),
        None => super::gemm(client, g, a, b, &out),
    };
    match done {
        Err(KernelError::Unsupported(_)) if path.is_some() => Ok(None),
        Err(e) => Err(e),
        Ok(()) => {
            let v = out.read(client)?;
            Ok(Some((out, v)))
        }
    }
}

/// Whether `got` is `want` to `1e-4` of `want`'s largest finite magnitude (non-finite exactly
/// where `want` is).
fn agrees(got: &[f32], want: &[f32]) -> bool {
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1e-30f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).all(|(&x, &w)| {
        if w.is_finite() {
            (x - w).abs() <= 1e-4 * scale
        } else {
            x.is_nan() && w.is_nan() || x == w
        }
    })
}

fn sync<R: Runtime>(client: &ComputeClient<R>) -> Result<(), KernelError> {
    crate::counters::waited();
    cubecl::future::block_on(client.sync()).map_err(|e| KernelError::Device(format!("{e:?}")))
}
