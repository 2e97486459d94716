//! How the faer backend splits row kernels across rayon. Kernels whose results do not depend on
//! the split take one block per thread ([`Faer::row_block`]); reductions take [`REDUCE_PARTS`]
//! fixed row blocks whose partial results are combined in block order, so their value is the same
//! on any number of threads.

use crate::{Faer, FaerElem};
use rayon::prelude::*;
use simbal_core::router::score::lbl_norm_inv;
use simbal_core::Scalar;

/// Least elements a rayon task of a row kernel should get.
const MIN_BLOCK_ELEMS: usize = 1 << 13;
/// Least elements a finite check splits across threads.
pub(crate) const SCAN_MIN_PAR: usize = 1 << 18;
/// Fixed number of partial sums in reductions, so results do not depend on the thread count.
pub(crate) const REDUCE_PARTS: usize = 64;
/// Largest `E` whose partial column sums ([`Faer::column_sums`]) live on the stack.
pub(crate) const SUMS_MAX_E: usize = 512;

impl<T> Faer<T> {
    /// How many blocks work is split into at most.
    pub(crate) fn threads(&self) -> usize {
        self.par.degree().max(1)
    }

    /// Rows per block for a row kernel over `n` rows of `width` elements, or `None` to run
    /// sequentially (one thread, or too little work to be worth a split).
    pub(crate) fn row_block(&self, n: usize, width: usize) -> Option<usize> {
        let threads = self.threads();
        if threads <= 1 {
            return None;
        }
        let min_rows = MIN_BLOCK_ELEMS.div_ceil(width.max(1)).max(1);
        let blocks = threads.min(n / min_rows);
        if blocks <= 1 {
            return None;
        }
        Some(n.div_ceil(blocks))
    }
}

impl<T: FaerElem> Faer<T> {
    /// `f(r0, a_block, b_block)` over [`REDUCE_PARTS`] fixed row blocks of `a` and `b` (`n x e`
    /// each; `r0` the block's first row), the partial results added in block order: the same
    /// value on any number of threads.
    pub(crate) fn row_partial_sums(
        &self,
        n: usize,
        e: usize,
        f: impl Fn(usize, &[T], &[T]) -> T + Sync,
        a: &[T],
        b: &[T],
    ) -> T {
        if n == 0 || e == 0 {
            return T::zero(); // no rows (blocks of 0 elements cannot be chunked)
        }
        let rows = n.div_ceil(REDUCE_PARTS);
        let chunk = rows * e;
        let mut parts = [T::zero(); REDUCE_PARTS];
        if self.row_block(n, e).is_some() {
            a.par_chunks(chunk)
                .zip(b.par_chunks(chunk))
                .zip(parts.par_iter_mut())
                .enumerate()
                .for_each(|(i, ((ab, bb), s))| *s = f(i * rows, ab, bb));
        } else {
            let blocks = a.chunks(chunk).zip(b.chunks(chunk)).zip(parts.iter_mut());
            for (i, ((ab, bb), s)) in blocks.enumerate() {
                *s = f(i * rows, ab, bb);
            }
        }
        parts.iter().fold(T::zero(), |acc, &s| acc + s)
    }

    /// Column sums in `f64` of the `n x e` matrix `p` into `out` (`1 <= e <= SUMS_MAX_E`), each
    /// row normalised first when `normalize` (core's `stats_of`: `v * inv` in `f64` with
    /// `inv = lbl_norm_inv(row)`): [`REDUCE_PARTS`] fixed row blocks summed in a fixed binary
    /// tree, so the value does not depend on the thread count; the halves run in parallel when
    /// the work is worth a split.
    pub(crate) fn column_sums(
        &self,
        n: usize,
        e: usize,
        normalize: bool,
        p: &[T],
        out: &mut [f64],
    ) {
        let leaf = n.div_ceil(REDUCE_PARTS).max(1) * e;
        let par = self.row_block(n, e).is_some();
        tree_column_sums(par, normalize, e, leaf, p, out);
    }
}

/// Column sums of the rows of `p` (width `e`, normalised when `norm`) into `out`: one pass over
/// a block of at most `leaf` elements, otherwise the sum of the two halves (split at a whole
/// number of leaves).
fn tree_column_sums<T: Scalar>(
    par: bool,
    norm: bool,
    e: usize,
    leaf: usize,
    p: &[T],
    out: &mut [f64],
) {
    if p.len() <= leaf {
        out.fill(0.0);
        if norm {
            for row in p.chunks_exact(e) {
                let inv = lbl_norm_inv(row).to_f64_lossy();
                for (s, &v) in out.iter_mut().zip(row) {
                    *s += v.to_f64_lossy() * inv;
                }
            }
            return;
        }
        for row in p.chunks_exact(e) {
            for (s, &v) in out.iter_mut().zip(row) {
                *s += v.to_f64_lossy();
            }
        }
        return;
    }
    let (lo, hi) = p.split_at(p.len().div_ceil(leaf) / 2 * leaf);
    // The right half's sums on the stack: a parallel reduction without an allocation.
    let mut right = [0.0f64; SUMS_MAX_E];
    let right = &mut right[..e];
    if par {
        rayon::join(
            || tree_column_sums(par, norm, e, leaf, lo, out),
            || tree_column_sums(par, norm, e, leaf, hi, right),
        );
    } else {
        tree_column_sums(par, norm, e, leaf, lo, out);
        tree_column_sums(par, norm, e, leaf, hi, right);
    }
    for (o, &r) in out.iter_mut().zip(right.iter()) {
        *o += r;
    }
}

#[cfg(test)]
mod tests {
    use crate::{Faer, Par};

    #[test]
    fn column_sums_match_a_plain_sum_and_do_not_depend_on_threads() {
        let e = 7;
        for n in [0, 1, 63, 64, 65, 1000, 5000] {
            let p: Vec<f32> = (0..n * e)
                .map(|i| ((i * 7919) % 101) as f32 / 101.0)
                .collect();
            let mut want = vec![0.0f64; e];
            for row in p.chunks_exact(e) {
                for (s, &v) in want.iter_mut().zip(row) {
                    *s += f64::from(v);
                }
            }
            let sums = |par| {
                let mut out = vec![f64::NAN; e];
                Faer::<f32>::with_par(par).column_sums(n, e, false, &p, &mut out);
                out
            };
            let (seq, par) = (sums(Par::Seq), sums(Par::rayon(3)));
            assert_eq!(seq, par, "n {n}: thread-count independent");
            for (g, w) in seq.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "n {n}: {g} vs {w}"
                );
            }
        }
    }
}
