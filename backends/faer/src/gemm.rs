//! GEMM on faer: row-major slices viewed as faer matrices, split across rayon in blocks of the
//! output, each block computed by faer's sequential kernel.
//!
//! Splitting the output ourselves (instead of faer's own parallel GEMM) keeps the hot path free of
//! allocations (faer's parallel kernel allocates its job tables per call) and suits the router's
//! skinny shapes: `Z = X R` and `dX = dZ R^T` split over tokens, `dR = X^T dZ` over `D`.

use crate::{skinny, FaerElem};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use simbal_core::Gemm;

/// Least multiply-adds worth a rayon task of its own.
const MIN_BLOCK_WORK: usize = 1 << 17;
/// Block boundaries are rounded to this many rows (or columns) to keep faer's micro-kernels full.
pub(crate) const ALIGN: usize = 16;

/// `C = alpha op(A) op(B) + beta C` on row-major slices of the lengths of `Gemm::lens` (checked
/// by core).
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
    let work = m.saturating_mul(n).saturating_mul(k);
    let blocks = threads
        .min(work / MIN_BLOCK_WORK)
        .min(m.max(n) / ALIGN)
        .max(1);
    // A Gram matrix (`A^T A` or `A A^T` of one buffer, SimBal's `R^T R`) is symmetric: compute
    // its lower triangle (half the work) and mirror it.
    let gram = g.beta == 0.0
        && m == n
        && g.trans_a != g.trans_b
        && a.len() == b.len()
        && core::ptr::eq(a.as_ptr(), b.as_ptr());
    if gram {
        gram_lower(
            MatMut::from_row_major_slice_mut(c, m, n),
            lhs,
            rhs,
            T::of(g.alpha),
            blocks,
        );
        for i in 0..m {
            for j in i + 1..m {
                c[i * m + j] = c[j * m + i];
            }
        }
        return;
    }
    if skinny::applies(m, n, k, g.trans_a, g.trans_b) {
        let s = skinny::Skinny {
            m,
            k,
            alpha: T::of(g.alpha),
            accumulate: matches!(accum, Accum::Add),
            a,
            b,
        };
        skinny::gemm(threads, n, s, c);
        return;
    }
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    split(dst, accum, lhs, rhs, T::of(g.alpha), blocks);
}

/// Lower triangle (diagonal included) of the square `lhs rhs`, on two blocks of equal work when
/// `blocks > 1`: rows `[0, m1)` (a triangle) and rows `[m1, m)` (a rectangle and a triangle),
/// `m1 ~ m / sqrt(2)`.
fn gram_lower<T: FaerElem>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    blocks: usize,
) {
    let m = dst.nrows();
    let lower = |dst: MatMut<'_, T>, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>| {
        triangular::matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            lhs,
            BlockStructure::Rectangular,
            rhs,
            BlockStructure::Rectangular,
            alpha,
            Par::Seq,
        )
    };
    let m1 = (m as f64 / core::f64::consts::SQRT_2) as usize;
    if blocks <= 1 || m1 == 0 || m1 >= m {
        lower(dst, lhs, rhs);
        return;
    }
    let (top, bottom) = dst.split_at_row_mut(m1);
    let top = top.subcols_mut(0, m1);
    let (bl, br) = bottom.split_at_col_mut(m1);
    let (lt, lb) = lhs.split_at_row(m1);
    let (rl, rr) = rhs.split_at_col(m1);
    rayon::join(
        || lower(top, lt, rl),
        || {
            matmul(bl, Accum::Replace, lb, rl, alpha, Par::Seq);
            lower(br, lb, rr);
        },
    );
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
        return;
    }
    // The two halves `(dst, lhs, rhs)`: rows of `dst` and `lhs`, or columns of `dst` and `rhs`.
    let (first, second) = if m >= n {
        let mid = cut(m, left, blocks);
        let (top, bottom) = dst.split_at_row_mut(mid);
        let (lt, lb) = lhs.split_at_row(mid);
        ((top, lt, rhs), (bottom, lb, rhs))
    } else {
        let mid = cut(n, left, blocks);
        let (l, r) = dst.split_at_col_mut(mid);
        let (rl, rr) = rhs.split_at_col(mid);
        ((l, lhs, rl), (r, lhs, rr))
    };
    rayon::join(
        || split(first.0, accum, first.1, first.2, alpha, left),
        || split(second.0, accum, second.1, second.2, alpha, blocks - left),
    );
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
