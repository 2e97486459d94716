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

/// The gradient coefficient `beta * 2 / N` the backward row kernel takes.
pub fn z_coef<T: Scalar>(beta: f64, n: usize) -> T {
    T::of(beta * 2.0 / n as f64)
}
