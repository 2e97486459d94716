//! GEMM on faer: row-major slices viewed as faer matrices, split across rayon in blocks of the
//! output, each block computed by faer's sequential kernel.
//!
//! Splitting the output ourselves (instead of faer's own parallel GEMM) keeps the hot path free of
//! allocations (faer's parallel kernel allocates its job tables per call) and suits the router's
//! skinny shapes: `Z = X R` and `dX = dZ R^T` split over tokens, `dR = X^T dZ` over `D`.

use crate::FaerElem;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use simbal_core::Gemm;

/// Least multiply-adds worth a rayon task of its own.
const MIN_BLOCK_WORK: usize = 1 << 17;
/// Block boundaries are rounded to this many rows (or columns) to keep faer's micro-kernels full.
const ALIGN: usize = 16;

/// `C = alpha op(A) op(B) + beta C` on row-major slices whose lengths were checked.
pub(crate) fn gemm<T: FaerElem>(g: &Gemm, threads: usize, a: &[T], b: &[T], c: &mut [T]) {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return;
    }
    let accum = if g.beta == 0.0 {
        Accum::Replace
    } else {
        if g.beta != 1.0 {
            let beta = T::of(g.beta);
            c.iter_mut().for_each(|v| *v *= beta);
        }
        Accum::Add
    };
    // op(A) is m x k: row-major A, or A stored k x m row-major (= m x k column-major).
    let lhs = if g.trans_a {
        MatRef::from_column_major_slice(a, m, k)
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let rhs = if g.trans_b {
        MatRef::from_column_major_slice(b, k, n)
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    let work = m.saturating_mul(n).saturating_mul(k);
    let blocks = threads
        .min(work / MIN_BLOCK_WORK)
        .min(m.max(n) / ALIGN)
        .max(1);
    split(dst, accum, lhs, rhs, T::of(g.alpha), blocks);
}

/// Splits the output along its longer side into `blocks` nearly equal, aligned blocks.
fn split<T: FaerElem>(
    dst: MatMut<'_, T>,
    accum: Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    blocks: usize,
) {
    if blocks <= 1 {
        matmul(dst, accum, lhs, rhs, alpha, Par::Seq);
        return;
    }
    let left = blocks / 2;
    let (m, n) = (dst.nrows(), dst.ncols());
    if m.max(n) < 2 {
        matmul(dst, accum, lhs, rhs, alpha, Par::Seq);
    } else if m >= n {
        let mid = cut(m, left, blocks);
        let (top, bottom) = dst.split_at_row_mut(mid);
        let (lt, lb) = lhs.split_at_row(mid);
        rayon::join(
            || split(top, accum, lt, rhs, alpha, left),
            || split(bottom, accum, lb, rhs, alpha, blocks - left),
        );
    } else {
        let mid = cut(n, left, blocks);
        let (l, r) = dst.split_at_col_mut(mid);
        let (rl, rr) = rhs.split_at_col(mid);
        rayon::join(
            || split(l, accum, lhs, rl, alpha, left),
            || split(r, accum, lhs, rr, alpha, blocks - left),
        );
    }
}

/// Where to cut `len` so the first part gets `left / blocks` of it, rounded to [`ALIGN`] when
/// both parts stay non-empty.
fn cut(len: usize, left: usize, blocks: usize) -> usize {
    let raw = len * left / blocks;
    let aligned = (raw + ALIGN / 2) / ALIGN * ALIGN;
    if aligned > 0 && aligned < len {
        aligned
    } else {
        raw.clamp(1, len - 1)
    }
}
