//! Reductions over token groups (a group is the batch, or one sequence).

use crate::scalar::Scalar;

/// `out[b, c] = sum_{t in group b} a[t, c]` for groups of `group_len` rows of width `cols`.
pub fn group_column_sums<T: Scalar>(cols: usize, group_len: usize, a: &[T], out: &mut [T]) {
    out.iter_mut().for_each(|v| *v = T::zero());
    let rows_per = group_len.max(1);
    for (r, row) in a.chunks_exact(cols.max(1)).enumerate() {
        let b = r / rows_per;
        let o = &mut out[b * cols..(b + 1) * cols];
        for (ov, &x) in o.iter_mut().zip(row) {
            *ov = *ov + x;
        }
    }
}

/// `out[b, e]` = kept assignments of group `b` (of `group_len` tokens) to expert `e`.
pub fn group_counts(
    k: usize,
    e: usize,
    group_len: usize,
    idx: &[u32],
    dropped: &[u32],
    out: &mut [u32],
) {
    out.iter_mut().for_each(|v| *v = 0);
    let per = group_len.saturating_mul(k).max(1);
    for (a, (&i, &d)) in idx.iter().zip(dropped).enumerate() {
        if d == 0 && (i as usize) < e {
            out[(a / per) * e + i as usize] += 1;
        }
    }
}

/// Largest `|x|`, NaN if any element is NaN, 0 for an empty slice.
pub fn max_abs<T: Scalar>(x: &[T]) -> T {
    let mut m = T::zero();
    for &v in x {
        if v.is_nan() {
            return v;
        }
        let a = v.abs();
        if a > m {
            m = a;
        }
    }
    m
}
