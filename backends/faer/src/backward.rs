//! The router's backward kernel on faer: the rows of `dz` in blocks across rayon, each block
//! also reducing what the [`simbal_core::router::kernels::BackwardRequest`] asks (its
//! `sum lse^2` and `max |dz|`) while its rows are in cache, and the generic row kernel (core's
//! rows with one `lse` per row for both the z-loss term and its sum).

use crate::blocks::REDUCE_PARTS;
use crate::reduce::{max_abs_lanes, max_nan};
use crate::{Faer, FaerElem};
use rayon::prelude::*;
use simbal_core::config::{RouterConfig, ScoreFn};
use simbal_core::router::reference::router_backward_rows;
use simbal_core::tokens::MASKED;

/// The inputs of the backward row kernel over a block of rows (lengths checked by core).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct BackwardRows<'a, T> {
    /// Routing configuration.
    pub cfg: &'a RouterConfig,
    /// Logits, `rows x E`.
    pub z: &'a [T],
    /// Scores, `rows x E`.
    pub p: &'a [T],
    /// Expert indices, `rows x k`.
    pub idx: &'a [u32],
    /// Gates, `rows x k`.
    pub gates: &'a [T],
    /// Dropped flags, `rows x k`.
    pub dropped: &'a [u32],
    /// Gate gradient, `rows x k`.
    pub dw: &'a [T],
    /// LBL coefficients of the whole pass (`groups x E`).
    pub lbl: Option<&'a [T]>,
    /// The LBL's scores are each token's scores normalised to sum 1 (its `dL/dq` row goes
    /// through the normalisation).
    pub normalize: bool,
    /// Tokens per group when the groups are runs (`ids` is `None`).
    pub group_len: usize,
    /// Per-token group ids of the whole pass ([`MASKED`]: no LBL, no z-loss), or `None`: runs
    /// of `group_len` tokens, all valid.
    pub ids: Option<&'a [u32]>,
    /// Index in the pass of the block's first row (picks its LBL coefficient rows and ids).
    pub r0: usize,
    /// z-loss coefficient `beta * 2 / N` (0 without z-loss).
    pub z_coef: T,
    /// Also sum `lse(z_t)^2` over the rows.
    pub lse_sq: bool,
}

impl<'a, T: Copy> BackwardRows<'a, T> {
    /// The LBL coefficient row of block row `r` (`None` without LBL or for a masked token).
    #[inline]
    pub fn coef_row(&self, r: usize) -> Option<&'a [T]> {
        let e = self.cfg.experts;
        let c = self.lbl?;
        let grp = match self.ids {
            None => (self.r0 + r) / self.group_len,
            Some(ids) => match ids[self.r0 + r] {
                MASKED => return None,
                g => g as usize,
            },
        };
        Some(&c[grp * e..(grp + 1) * e])
    }

    /// Whether block row `r` is a valid (unmasked) token.
    #[inline]
    pub fn valid(&self, r: usize) -> bool {
        self.ids.is_none_or(|ids| ids[self.r0 + r] != MASKED)
    }

    /// Rows `[r0, r1)` of this block.
    fn rows(&self, r0: usize, r1: usize) -> Self {
        let (e, k) = (self.cfg.experts, self.cfg.k);
        let (re, rk) = (r0 * e..r1 * e, r0 * k..r1 * k);
        Self {
            z: &self.z[re.clone()],
            p: &self.p[re],
            idx: &self.idx[rk.clone()],
            gates: &self.gates[rk.clone()],
            dropped: &self.dropped[rk.clone()],
            dw: &self.dw[rk],
            r0: self.r0 + r0,
            ..*self
        }
    }
}

impl<T: FaerElem> Faer<T> {
    /// The backward row kernel over blocks of the `n` rows of `x`, each block also reducing its
    /// `sum lse^2` (`x.lse_sq`) and `max |dz|` (`max_dz`). With `lse_sq` the blocks are the
    /// [`REDUCE_PARTS`] fixed row ranges, summed in order, so the value does not depend on the
    /// thread count; otherwise one block per thread. Returns `(sum lse^2, max |dz|)` (0 where
    /// not asked).
    pub(crate) fn backward_blocks(
        &self,
        n: usize,
        x: &BackwardRows<'_, T>,
        dz: &mut [T],
        max_dz: bool,
    ) -> (T, T) {
        let e = x.cfg.experts;
        if n == 0 {
            return (T::zero(), T::zero()); // no rows (blocks of 0 rows cannot be chunked)
        }
        let fixed = n.div_ceil(REDUCE_PARTS);
        let par = self.row_block(n, e);
        // At least `fixed` rows per block: never more blocks than partial results.
        let rows = if x.lse_sq {
            fixed
        } else {
            par.unwrap_or(n).max(fixed)
        };
        let block = |b: usize, dz: &mut [T]| -> (T, T) {
            let r0 = b * rows;
            let l = T::backward_rows(&x.rows(r0, r0 + dz.len() / e), dz);
            let m = if max_dz { max_abs_lanes(dz) } else { T::zero() };
            (l, m)
        };
        let mut parts = [(T::zero(), T::zero()); REDUCE_PARTS];
        if par.is_some() {
            dz.par_chunks_mut(rows * e)
                .zip(parts.par_iter_mut())
                .enumerate()
                .for_each(|(b, (dz, out))| *out = block(b, dz));
        } else {
            for (b, (dz, out)) in dz.chunks_mut(rows * e).zip(parts.iter_mut()).enumerate() {
                *out = block(b, dz);
            }
        }
        parts
            .iter()
            .fold((T::zero(), T::zero()), |(l, m), &(pl, pm)| {
                (l + pl, max_nan(m, pm))
            })
    }
}

/// Backward rows of a block through core's kernel (every score function, the LBL's per-token
/// normalisation, masked tokens); returns the valid rows' `sum lse(z_t)^2` when `x.lse_sq`
/// (else 0). With softmax scores each row's `lse` is taken once (vectorised in `f32`) for both
/// the z-loss term, added after core's kernel exactly as core adds it (`dz += z_coef lse(z) p`,
/// last), and the sum.
pub(crate) fn rows_generic<T: FaerElem>(x: &BackwardRows<'_, T>, dz: &mut [T]) -> T {
    let e = x.cfg.experts;
    let coef_row = |r: usize| x.coef_row(r);
    let valid = |r: usize| x.valid(r);
    let rows = |z_coef: T, dz: &mut [T]| {
        let (cfg, z, p, idx, gates, dropped, dw) =
            (x.cfg, x.z, x.p, x.idx, x.gates, x.dropped, x.dw);
        let norm = x.normalize;
        router_backward_rows(
            cfg, z, p, idx, gates, dropped, dw, coef_row, norm, z_coef, valid, dz,
        );
    };
    if x.cfg.score != ScoreFn::Softmax {
        rows(x.z_coef, dz);
        return match (x.lse_sq, x.ids) {
            (false, _) => T::zero(),
            (true, None) => T::lse_sq_sum(e, x.z),
            (true, Some(_)) => {
                let mut sum = T::zero();
                T::lse_rows(e, x.z, |r, l| {
                    if valid(r) {
                        sum += l * l;
                    }
                });
                sum
            }
        };
    }
    rows(T::zero(), dz);
    let mut sum = T::zero();
    if x.z_coef != T::zero() || x.lse_sq {
        T::lse_rows(e, x.z, |r, l| {
            if !valid(r) {
                return;
            }
            sum += l * l;
            if x.z_coef != T::zero() {
                let c = x.z_coef * l;
                let row = dz[r * e..(r + 1) * e].iter_mut().zip(&x.p[r * e..]);
                for (dv, &pv) in row {
                    *dv += c * pv;
                }
            }
        });
    }
    if x.lse_sq {
        sum
    } else {
        T::zero()
    }
}
