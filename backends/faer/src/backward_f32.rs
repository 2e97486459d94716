//! The `f32` backward row kernel for softmax scores with renormalised gates (the common router):
//! LBL coefficients, the score backward, the gate term and the z-loss term in one sweep per row,
//! the `lse` for the z-loss from the scores (`max z - ln max p`, no `exp`), and the rows'
//! `sum lse^2` (the z-loss value) from the same `lse`.
//!
//! Same formula and per-element operation order as core's `router_backward_rows`
//! (`dz_c = p_c (coef_c - <p, coef>) - p_c m + z_coef lse p_c`, then `a_j q_{i_j}` added at each
//! chosen expert); only the row reductions are split into lanes, and the z-loss term is added
//! before the chosen experts' gate terms instead of after.

use crate::backward::BackwardRows;
use crate::exp_f32::lse_from_softmax;
use pulp::{Arch, Simd, WithSimd};
use simbal_core::router::select::renorm_eps;

/// Lanes of the row reductions.
const LANES: usize = 8;

/// `sum_c a_c b_c` in [`LANES`] partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (&u, &v) in ra.iter().zip(rb) {
        s += u * v;
    }
    s
}

/// One block of rows and its output.
struct Sweep<'r, 'a> {
    x: &'r BackwardRows<'a, f32>,
    dz: &'r mut [f32],
}

impl WithSimd for Sweep<'_, '_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> f32 {
        // Masked tokens only cost a check per row when there are ids.
        if self.x.ids.is_some() {
            sweep::<true>(self.x, self.dz)
        } else {
            sweep::<false>(self.x, self.dz)
        }
    }
}

/// The rows of `x` into `dz`; with `MASK` a masked token (see [`BackwardRows::valid`]) gets no
/// z-loss term and adds nothing to `sum lse^2` (its LBL row is already `None`).
#[inline(always)]
fn sweep<const MASK: bool>(x: &BackwardRows<'_, f32>, dz: &mut [f32]) -> f32 {
    let mut lse_sq = 0.0f32;
    let (e, k) = (x.cfg.experts, x.cfg.k);
    let s = x.cfg.scale as f32;
    let eps = renorm_eps::<f32>();
    for (r, dzr) in dz.chunks_exact_mut(e).enumerate() {
        let zr = &x.z[r * e..(r + 1) * e];
        let pr = &x.p[r * e..(r + 1) * e];
        let ir = &x.idx[r * k..(r + 1) * k];
        let wr = &x.gates[r * k..(r + 1) * k];
        let dr = &x.dropped[r * k..(r + 1) * k];
        let gr = &x.dw[r * k..(r + 1) * k];
        let kept_dw = |j: usize| if dr[j] == 0 { gr[j] } else { 0.0 };
        let mut sum = 0.0f32;
        let mut dot_w = 0.0f32;
        for j in 0..k {
            sum += pr[ir[j] as usize];
            dot_w += kept_dw(j) * wr[j];
        }
        let inv = 1.0 / (sum + eps);
        let a = |j: usize| s * kept_dw(j) - dot_w;
        let mut m = 0.0f32;
        for j in 0..k {
            m += a(j) * (pr[ir[j] as usize] * inv);
        }
        let zc = if (x.z_coef != 0.0 || x.lse_sq) && (!MASK || x.valid(r)) {
            let lse = lse_from_softmax(zr, pr);
            lse_sq += lse * lse;
            x.z_coef * lse
        } else {
            0.0
        };
        match x.coef_row(r) {
            Some(c) => {
                let dp = dot(c, pr);
                for ((d, &pc), &cc) in dzr.iter_mut().zip(pr).zip(c) {
                    *d = pc * (cc - dp) - pc * m + zc * pc;
                }
            }
            None => {
                for (d, &pc) in dzr.iter_mut().zip(pr) {
                    *d = -(pc * m) + zc * pc;
                }
            }
        }
        for j in 0..k {
            let i = ir[j] as usize;
            dzr[i] += a(j) * (pr[i] * inv);
        }
    }
    lse_sq
}

/// The sweep over the rows of `x` into `dz` with the widest instruction set the CPU has; returns
/// the valid rows' `sum lse^2` when `x.lse_sq` (else 0). Needs softmax scores, renormalised
/// gates and no per-token LBL normalisation.
pub(crate) fn backward_rows(x: &BackwardRows<'_, f32>, dz: &mut [f32]) -> f32 {
    Arch::new().dispatch(Sweep { x, dz })
}
