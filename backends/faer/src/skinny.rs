//! `C (m x n) = A (m x k) B (k x n)`, both row-major, with a skinny output (`n <= MAX_N`
//! columns): the forward `Z = X R` for the router's `E = 8` or `16`, which is bound by reading
//! the tall `A` rather than by FLOPs. One pass over `A`, four rows at a time, the `4 x n`
//! outputs in registers; each `k` step is one broadcast per row times the row `B[k, :]`.
//! faer's kernels pack `A` first and moved it at about half the streaming rate on this shape
//! (4.2 ms against 3.1 ms here for the Mixtral-like 4096 x 4096 x 8 forward, 2 threads).
//! (`dR = X^T dZ` was tried the same way, `A^T` in column blocks; it ran no faster than faer's
//! kernel, so that case stays with faer.)
//!
//! Threads split the rows of `C`, and each output element is summed by one thread in a fixed
//! order, so results do not depend on the thread count. The loops are plain indexing the
//! compiler vectorises over the `n` columns; [`pulp::Arch::dispatch`] compiles them for the
//! widest instruction set the CPU has.

use crate::FaerElem;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Widest output handled here; wider outputs go to faer's kernels.
pub(crate) const MAX_N: usize = 16;
/// Least inner dimension and rows of `C` for the skinny kernels to pay off.
pub(crate) const MIN_DIM: usize = 64;
/// Rows of `A` per register block.
const ROWS: usize = 4;
/// Least rows of `C` per rayon task.
const MIN_TASK_ROWS: usize = 64;

/// Whether `C = alpha op(A) op(B) (+ C)` of these sizes and transposes takes the skinny kernel.
pub(crate) fn applies(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> bool {
    (1..=MAX_N).contains(&n) && m >= MIN_DIM && k >= MIN_DIM && !trans_a && !trans_b
}

/// The operands of a skinny product: `C = alpha A B` (`accumulate`: `C += ...`), `A` row-major
/// `m x k`, `B` row-major `k x n`.
#[derive(Clone, Copy)]
pub(crate) struct Skinny<'a, T> {
    pub m: usize,
    pub k: usize,
    pub alpha: T,
    pub accumulate: bool,
    pub a: &'a [T],
    pub b: &'a [T],
}

/// `C = alpha A B` (`accumulate`: `C += ...`) for a skinny `C` of `n` columns. Needs
/// [`applies`] and checked lengths.
pub(crate) fn gemm<T: FaerElem>(threads: usize, n: usize, s: Skinny<'_, T>, c: &mut [T]) {
    macro_rules! by_width {
        ($($w:literal)*) => {
            match n {
                $($w => run::<T, $w>(threads, s, c),)*
                // `applies` bounds n to 1..=MAX_N.
                _ => {}
            }
        };
    }
    by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

fn run<T: FaerElem, const N: usize>(threads: usize, s: Skinny<'_, T>, c: &mut [T]) {
    let blocks = threads.min(s.m / MIN_TASK_ROWS).max(1);
    // Rows of C per task, a multiple of ROWS so only the last task has a remainder.
    let rows = s.m.div_ceil(blocks).div_ceil(ROWS) * ROWS;
    let task = |r0: usize, c: &mut [T]| Arch::new().dispatch(Kernel::<T, N> { s, r0, c });
    if blocks <= 1 {
        task(0, c);
    } else {
        c.par_chunks_mut(rows * N)
            .enumerate()
            .for_each(|(i, cb)| task(i * rows, cb));
    }
}

/// One task: rows `[r0, r0 + c.len() / N)` of `C`.
struct Kernel<'a, T, const N: usize> {
    s: Skinny<'a, T>,
    r0: usize,
    c: &'a mut [T],
}

impl<T: FaerElem, const N: usize> WithSimd for Kernel<'_, T, N> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        nn::<T, N>(self.s, self.r0, self.c)
    }
}

/// Stores `alpha * acc` into `c` (`accumulate`: adds it).
#[inline(always)]
fn store<T: FaerElem, const N: usize>(c: &mut [T], acc: &[T; N], alpha: T, accumulate: bool) {
    if accumulate {
        for (cv, &v) in c.iter_mut().zip(acc) {
            *cv += alpha * v;
        }
    } else {
        for (cv, &v) in c.iter_mut().zip(acc) {
            *cv = alpha * v;
        }
    }
}

/// `C[r0.., :] = alpha A[r0.., :] B`, `A` row-major `m x k`, `B` row-major `k x N`.
#[inline(always)]
fn nn<T: FaerElem, const N: usize>(s: Skinny<'_, T>, r0: usize, c: &mut [T]) {
    let Skinny {
        k,
        alpha,
        accumulate,
        a,
        b,
        ..
    } = s;
    let rows = c.len() / N;
    let a = &a[r0 * k..(r0 + rows) * k];
    let b = &b[..k * N];
    let mut blocks = a.chunks_exact(ROWS * k).zip(c.chunks_exact_mut(ROWS * N));
    for (ab, cb) in &mut blocks {
        let (a0, rest) = ab.split_at(k);
        let (a1, rest) = rest.split_at(k);
        let (a2, a3) = rest.split_at(k);
        let mut acc = [[T::zero(); N]; ROWS];
        let inputs = a0.iter().zip(a1).zip(a2).zip(a3).zip(b.chunks_exact(N));
        for ((((&x0, &x1), &x2), &x3), br) in inputs {
            for j in 0..N {
                let bj = br[j];
                acc[0][j] += x0 * bj;
                acc[1][j] += x1 * bj;
                acc[2][j] += x2 * bj;
                acc[3][j] += x3 * bj;
            }
        }
        for (cr, accr) in cb.chunks_exact_mut(N).zip(&acc) {
            store(cr, accr, alpha, accumulate);
        }
    }
    // The last task's remaining rows, one at a time.
    let done = rows / ROWS * ROWS;
    for (ar, cr) in a[done * k..]
        .chunks_exact(k)
        .zip(c[done * N..].chunks_exact_mut(N))
    {
        let mut acc = [T::zero(); N];
        for (&x, br) in ar.iter().zip(b.chunks_exact(N)) {
            for j in 0..N {
                acc[j] += x * br[j];
            }
        }
        store(cr, &acc, alpha, accumulate);
    }
}
