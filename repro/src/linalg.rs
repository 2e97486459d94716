//! The few dense kernels the experts and the heads need, row-major, cache-friendly loop orders
//! the compiler vectorises. Callers pass slices of the right lengths (checked by the public
//! functions that call these).

use simbal_core::Scalar;

/// `c (m x n) = a (m x p) * b (p x n)`, or `+=` when `acc`.
pub(crate) fn gemm_nn<T: Scalar>(n: usize, p: usize, a: &[T], b: &[T], c: &mut [T], acc: bool) {
    zero_unless(acc, c);
    if n == 0 || p == 0 {
        return;
    }
    for (a_row, c_row) in a.chunks_exact(p).zip(c.chunks_exact_mut(n)) {
        for (&aik, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            axpy_row(c_row, aik, b_row);
        }
    }
}

/// `c (m x n) = a^T * b` with `a` stored `p x m` and `b` stored `p x n`, or `+=` when `acc`.
pub(crate) fn gemm_tn<T: Scalar>(m: usize, n: usize, a: &[T], b: &[T], c: &mut [T], acc: bool) {
    zero_unless(acc, c);
    if n == 0 || m == 0 {
        return;
    }
    for (a_row, b_row) in a.chunks_exact(m).zip(b.chunks_exact(n)) {
        for (&ai, c_row) in a_row.iter().zip(c.chunks_exact_mut(n)) {
            axpy_row(c_row, ai, b_row);
        }
    }
}

/// Zeroes `c` unless the product accumulates into it.
#[inline]
fn zero_unless<T: Scalar>(acc: bool, c: &mut [T]) {
    if !acc {
        c.iter_mut().for_each(|v| *v = T::zero());
    }
}

/// `c_row += a * b_row`, skipped when `a` is zero (as the loops it serves always did).
#[inline(always)]
fn axpy_row<T: Scalar>(c_row: &mut [T], a: T, b_row: &[T]) {
    if a == T::zero() {
        return;
    }
    for (cv, &bv) in c_row.iter_mut().zip(b_row) {
        *cv = *cv + a * bv;
    }
}

/// `c (m x n) = a * b^T` with `a` stored `m x p` and `b` stored `n x p`, or `+=` when `acc`.
pub(crate) fn gemm_nt<T: Scalar>(n: usize, p: usize, a: &[T], b: &[T], c: &mut [T], acc: bool) {
    if n == 0 {
        return;
    }
    if p == 0 {
        zero_unless(acc, c);
        return;
    }
    for (a_row, c_row) in a.chunks_exact(p).zip(c.chunks_exact_mut(n)) {
        for (cv, b_row) in c_row.iter_mut().zip(b.chunks_exact(p)) {
            let d = dot(a_row, b_row);
            *cv = if acc { *cv + d } else { d };
        }
    }
}

/// `dst += src`, element-wise.
pub(crate) fn add_into<T: Scalar>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = *d + s;
    }
}

/// `dst += sum of the rows of src` (rows as long as `dst`).
pub(crate) fn add_rows<T: Scalar>(dst: &mut [T], src: &[T]) {
    if dst.is_empty() {
        return;
    }
    for row in src.chunks_exact(dst.len()) {
        add_into(dst, row);
    }
}

/// `<a, b>` with four partial sums (vectorises without reassociation licence).
pub(crate) fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    let mut s = [T::zero(); 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            s[l] = s[l] + x[l] * y[l];
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = tail + x * y;
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        p: usize,
        a: impl Fn(usize, usize) -> f64,
        b: impl Fn(usize, usize) -> f64,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..p).map(|l| a(i, l) * b(l, j)).sum();
            }
        }
        c
    }

    #[test]
    fn the_three_layouts_match_a_naive_product() {
        let (m, n, p) = (3, 5, 7);
        let a: Vec<f64> = (0..m * p).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..p * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let want = naive(m, n, p, |i, l| a[i * p + l], |l, j| b[l * n + j]);
        let mut c = vec![9.0; m * n];
        gemm_nn(n, p, &a, &b, &mut c, false);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // a^T stored p x m
        let at: Vec<f64> = (0..p * m).map(|q| a[(q % m) * p + q / m]).collect();
        let mut c2 = vec![1.0; m * n];
        gemm_tn(m, n, &at, &b, &mut c2, true);
        for (x, y) in c2.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-12);
        }
        // b^T stored n x p
        let bt: Vec<f64> = (0..n * p).map(|q| b[(q % p) * n + q / p]).collect();
        let mut c3 = vec![0.0; m * n];
        gemm_nt(n, p, &a, &bt, &mut c3, false);
        for (x, y) in c3.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
    }
}
