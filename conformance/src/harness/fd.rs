//! The finite-difference machinery: analytic gradients against central differences.
//!
//! Cases near a kink are rejected, never tolerated: a case is redrawn when the routing indices or
//! dropped flags at any point `± h` differ from those at the point itself (this covers top-k,
//! group admission and capacity dropping), and, for SimBal L1, when some `|G_ab|` is within
//! reach of a step (`|G_ab| < max(1e-4, 4 h max|R| + h^2)`).
//!
//! The FD tolerance here is NOT the SPEC's backend-agreement tolerance: it bounds the
//! truncation and rounding error of a central difference. In `f64` (the SPEC's FD setting),
//! `h = 1e-6` and the error `|fd - g| / max(1, |g|)` must stay below `1e-6`. Backends in `f32`
//! get a coarse sanity check with `h = 3e-3` and `2e-2`, which catches wrong formulas but not
//! rounding-level disagreement (that is the agreement checks' job).

use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{Scalar, SimBalConfig, SimBalNorm, WeightLayout};

/// Step, tolerance and case count of the finite differences for an element type.
#[derive(Debug, Clone, Copy)]
pub struct FdParams {
    /// Step `h`.
    pub h: f64,
    /// Bound on `|fd - analytic| / max(1, |analytic|)`.
    pub tol: f64,
    /// Number of accepted cases per property.
    pub cases: u32,
}

/// The FD parameters for `T` (see the module docs).
pub fn params<T: Scalar>() -> FdParams {
    if is_f64::<T>() {
        FdParams {
            h: 1e-6,
            tol: 1e-6,
            cases: 48,
        }
    } else {
        FdParams {
            h: 3e-3,
            tol: 2e-2,
            cases: 24,
        }
    }
}

/// Value of the objective at one point with the routing it took.
pub struct Eval {
    /// The objective.
    pub f: f64,
    /// Routing indices (empty without a routing).
    pub idx: Vec<u32>,
    /// Dropped flags (empty without a routing).
    pub dropped: Vec<u32>,
}

/// Smallest `|G_ab|` of `G = R^T R - I` (`R` viewed `D x E`), and `max |R|`.
pub fn gram_margin(layout: WeightLayout, d: usize, e: usize, r: &[f64]) -> (f64, f64) {
    let (rs, cs) = simbal_core::simbal::reference::strides(layout, d, e);
    let mut min = f64::INFINITY;
    for a in 0..e {
        for b in 0..e {
            let s: f64 = (0..d)
                .map(|i| r[i * rs + a * cs] * r[i * rs + b * cs])
                .sum();
            let g = if a == b { s - 1.0 } else { s };
            min = min.min(g.abs());
        }
    }
    (min, r.iter().fold(0.0f64, |m, v| m.max(v.abs())))
}

/// Rejects SimBal L1 cases with some `|G_ab|` within reach of a step of size `h`.
pub fn reject_l1_kink(
    simbal: Option<SimBalConfig>,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
    h: f64,
) -> CaseResult {
    if let Some(SimBalConfig {
        norm: SimBalNorm::L1,
        ..
    }) = simbal
    {
        let (min, rmax) = gram_margin(layout, d, e, r);
        if min < (4.0 * h * rmax + h * h).max(1e-4) {
            return Err(reject("SimBal L1: some |G_ab| is near 0"));
        }
    }
    Ok(())
}

/// Compares the central difference of `eval` along every coordinate of `point` with `grad`.
pub fn check_coords<T: Scalar>(
    what: &str,
    p: FdParams,
    point: &[f64],
    grad: &[f64],
    base: &Eval,
    mut eval: impl FnMut(&[f64]) -> Result<Eval, TestCaseError>,
) -> CaseResult {
    for i in 0..point.len() {
        let mut plus = point.to_vec();
        let mut minus = point.to_vec();
        plus[i] = T::of(point[i] + p.h).to_f64_lossy();
        minus[i] = T::of(point[i] - p.h).to_f64_lossy();
        let ep = eval(&plus)?;
        let em = eval(&minus)?;
        if ep.idx != base.idx
            || em.idx != base.idx
            || ep.dropped != base.dropped
            || em.dropped != base.dropped
        {
            return Err(reject("a routing decision changes within +-h"));
        }
        let fd = (ep.f - em.f) / (plus[i] - minus[i]);
        let err = (fd - grad[i]).abs() / grad[i].abs().max(1.0);
        if err.is_nan() || err > p.tol {
            return Err(fail(format!(
                "d objective / d {what}[{i}]: analytic {}, central difference {fd} (h = {}), error {err:.3e} > FD tol {:.0e}\n  analytic: {grad:?}",
                grad[i], p.h, p.tol
            )));
        }
    }
    Ok(())
}
