//! Router z-loss `beta (1/N) sum_t lse(Z_t)^2`; `dZ_t = beta (2/N) lse(Z_t) softmax(Z_t)` is
//! added inside the router backward row kernel.

use super::score::logsumexp_row;
use crate::scalar::Scalar;

/// `sum_t lse(Z_t)^2` over a block of rows of width `e`.
pub fn lse_sq_sum<T: Scalar>(e: usize, z: &[T]) -> T {
    let mut s = T::zero();
    for row in z.chunks_exact(e.max(1)) {
        let l = logsumexp_row(row);
        s = s + l * l;
    }
    s
}

/// `sum_t lse(z_t)^2` from the logits and their softmax `p`: `lse = max z - ln(max p)` per row
/// (the identity [`crate::Backend::lse_sq_sum_scored`] allows; no exponentials).
pub fn lse_sq_sum_from_softmax<T: Scalar>(e: usize, z: &[T], p: &[T]) -> T {
    let mut s = T::zero();
    for (zr, pr) in z.chunks_exact(e.max(1)).zip(p.chunks_exact(e.max(1))) {
        let l = crate::ops::score::row_max(zr) - crate::ops::score::row_max(pr).ln();
        s = s + l * l;
    }
    s
}

/// The gradient coefficient `beta * 2 / N` the backward row kernel takes.
pub fn z_coef<T: Scalar>(beta: f64, n: usize) -> T {
    T::of(beta * 2.0 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::score::softmax_row;

    #[test]
    fn lse_from_softmax_matches_the_direct_sum() {
        let e = 7;
        for scale in [0.1, 3.0, 300.0] {
            let z: alloc::vec::Vec<f64> = (0..4 * e)
                .map(|i| scale * (((i * 7919) % 31) as f64 - 15.0) / 15.0)
                .collect();
            let mut p = alloc::vec![0.0; z.len()];
            for (zr, pr) in z.chunks(e).zip(p.chunks_mut(e)) {
                softmax_row(zr, pr);
            }
            let (direct, scored) = (lse_sq_sum(e, &z), lse_sq_sum_from_softmax(e, &z, &p));
            assert!(
                (direct - scored).abs() <= 1e-12 * direct.abs().max(1.0),
                "{direct} vs {scored}"
            );
        }
    }
}
