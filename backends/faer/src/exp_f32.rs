//! Row softmax and logsumexp in `f32` with a branch-free `exp` the compiler vectorises.
//!
//! `exp` is the Cephes single-precision polynomial (about 1 ulp on `[-87.3, 88.4]`), evaluated
//! element-wise with no calls and no branches; [`pulp::Arch::dispatch`] compiles the loops for the
//! widest instruction set the CPU has (safe runtime dispatch, no `unsafe`). Reductions keep a fixed
//! number of lanes, so a row's value does not depend on the machine. Results agree with core's
//! scalar kernels (`expf` of the C library) to a few ulps, well inside the SPEC's `f32` tolerance.
//! NaN and `±inf` follow `expf`: `exp(NaN) = NaN`, `exp(-inf) = 0`, `exp(+inf) = inf`.

use pulp::{Arch, Simd, WithSimd};

/// Lanes of the max and sum reductions.
const LANES: usize = 8;
/// Below this `exp` underflows: 0 is returned (`expf` gives a subnormal below 1.2e-38).
const LOW: f32 = -87.336_54;
/// Above this `exp` overflows: `inf` is returned.
const HIGH: f32 = 88.376_26;
/// `1.5 * 2^23`: adding it rounds an `f32` of magnitude below `2^22` to an integer.
const ROUND: f32 = 12_582_912.0;

/// `exp(x)`, branch-free (selects only).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let xc = x.clamp(LOW, HIGH);
    // n = round(x / ln 2), read back as an integer from the mantissa of t.
    let t = xc * core::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut y = 1.987_569_1e-4_f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * (r * r) + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let v = y * scale;
    let v = if x < LOW { 0.0 } else { v };
    if x > HIGH {
        f32::INFINITY
    } else {
        v
    }
}

/// Largest value of a row, NaNs skipped (`-inf` when empty), as core's `row_max`.
#[inline(always)]
fn row_max(z: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        if v > m {
            m = v;
        }
    }
    m
}

/// `sum_i f(x_i)` in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for &v in chunks.remainder() {
        s += f(v);
    }
    s
}

/// Softmax of one row into `p` (no `ln`: the router never needs this row's `lse` here).
#[inline(always)]
pub(crate) fn softmax_row(z: &[f32], p: &mut [f32]) {
    let m = row_max(z);
    for (pi, &zi) in p.iter_mut().zip(z) {
        *pi = exp(zi - m);
    }
    let sum = lane_sum(p, |v| v);
    let inv = 1.0 / sum;
    for pi in p.iter_mut() {
        *pi *= inv;
    }
}

/// `lse(z)` of one row from its softmax `p`, with no `exp`: the largest logit `m` has
/// `p = exp(0) / sum`, so `lse = m + ln(sum) = m - ln(max p)`. `max p >= 1/E` never underflows,
/// and `ln` of it carries `p`'s rounding (an ulp), as the direct sum does.
#[inline(always)]
pub(crate) fn lse_from_softmax(z: &[f32], p: &[f32]) -> f32 {
    row_max(z) - row_max(p).ln()
}

/// `lse(z)` of one row.
#[inline(always)]
pub(crate) fn logsumexp_row(z: &[f32]) -> f32 {
    let m = row_max(z);
    m + lane_sum(z, |v| exp(v - m)).ln()
}

/// Softmax of every row of width `e` of `z` into `p`.
struct SoftmaxRows<'a> {
    e: usize,
    z: &'a [f32],
    p: &'a mut [f32],
}

impl WithSimd for SoftmaxRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for (zr, pr) in self
            .z
            .chunks_exact(self.e)
            .zip(self.p.chunks_exact_mut(self.e))
        {
            softmax_row(zr, pr);
        }
    }
}

/// `f(row, lse)` for every row of width `e` of `z`; with the rows' softmax `p`, `lse` comes
/// from it ([`lse_from_softmax`]). One dispatch either way, the choice made once per call.
struct LseRows<'a, F> {
    e: usize,
    z: &'a [f32],
    p: Option<&'a [f32]>,
    f: F,
}

impl<F: FnMut(usize, f32)> WithSimd for LseRows<'_, F> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(mut self, _simd: S) {
        let z_rows = self.z.chunks_exact(self.e);
        match self.p {
            Some(p) => {
                for (i, (zr, pr)) in z_rows.zip(p.chunks_exact(self.e)).enumerate() {
                    (self.f)(i, lse_from_softmax(zr, pr));
                }
            }
            None => {
                for (i, zr) in z_rows.enumerate() {
                    (self.f)(i, logsumexp_row(zr));
                }
            }
        }
    }
}

/// Calls `f(row, lse(row))` for every row of width `e >= 1` of `z`, in order, taking `lse`
/// from the rows' softmax `p` ([`lse_from_softmax`]).
pub(crate) fn lse_rows_from_softmax(e: usize, z: &[f32], p: &[f32], f: impl FnMut(usize, f32)) {
    Arch::new().dispatch(LseRows {
        e,
        z,
        p: Some(p),
        f,
    });
}

/// Softmax of every row of width `e >= 1` of `z` into `p` (same length as `z`).
pub(crate) fn softmax_rows(e: usize, z: &[f32], p: &mut [f32]) {
    Arch::new().dispatch(SoftmaxRows { e, z, p });
}

/// Calls `f(row, lse(row))` for every row of width `e >= 1` of `z`, in order.
pub(crate) fn lse_rows(e: usize, z: &[f32], f: impl FnMut(usize, f32)) {
    Arch::new().dispatch(LseRows { e, z, p: None, f });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulps() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_special_values() {
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_and_lse_match_core() {
        let e = 37;
        let z: Vec<f32> = (0..5 * e)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 9.0)
            .collect();
        let mut p = vec![0.0f32; z.len()];
        softmax_rows(e, &z, &mut p);
        let mut lse = Vec::new();
        lse_rows(e, &z, |i, l| lse.push((i, l)));
        assert_eq!(lse.len(), 5);
        for (row, (zr, pr)) in z.chunks(e).zip(p.chunks(e)).enumerate() {
            let mut q = vec![0.0f32; e];
            let l = simbal_core::router::score::softmax_row(zr, &mut q);
            for (a, b) in pr.iter().zip(&q) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
            }
            assert!((lse[row].1 - l).abs() <= 1e-6 * l.abs().max(1.0));
            assert_eq!(lse[row].0, row);
        }
    }

    #[test]
    fn nan_and_infinite_rows_follow_core() {
        let z = [f32::NEG_INFINITY, 0.0, f32::NAN, 1.0];
        let mut p = [0.0f32; 4];
        softmax_rows(4, &z, &mut p);
        let mut q = [0.0f32; 4];
        simbal_core::router::score::softmax_row(&z, &mut q);
        for (a, b) in p.iter().zip(&q) {
            assert_eq!(a.is_nan(), b.is_nan());
            if !b.is_nan() {
                assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }
        let all_inf = [f32::NEG_INFINITY; 3];
        let mut l = 0.0;
        lse_rows(3, &all_inf, |_, v| l = v);
        assert_eq!(
            l.is_nan(),
            simbal_core::router::score::logsumexp_row(&all_inf).is_nan()
        );
    }
}
