//! Score functions (softmax, sigmoid, sqrt-softplus) and their backward, one token row at a
//! time, and the per-token normalisation of element-wise scores the LBL uses.

use crate::config::ScoreFn;
use crate::scalar::Scalar;

/// Writes `softmax(z)` into `p` (max-subtracted) and returns `lse(z)`.
///
/// Finite logits give finite results for any magnitude: the largest term is always `exp(0) = 1`.
#[inline]
pub fn softmax_row<T: Scalar>(z: &[T], p: &mut [T]) -> T {
    let m = row_max(z);
    let mut sum = T::zero();
    for (pi, &zi) in p.iter_mut().zip(z) {
        let v = (zi - m).exp();
        *pi = v;
        sum = sum + v;
    }
    let inv = T::one() / sum;
    for pi in p.iter_mut() {
        *pi = *pi * inv;
    }
    m + sum.ln()
}

/// `lse(z) = max(z) + ln sum exp(z - max(z))`, stable for any finite row.
#[inline]
pub fn logsumexp_row<T: Scalar>(z: &[T]) -> T {
    let m = row_max(z);
    let mut sum = T::zero();
    for &zi in z {
        sum = sum + (zi - m).exp();
    }
    m + sum.ln()
}

/// Largest value of a row (NaNs are skipped; an empty row gives `-inf`).
#[inline]
pub fn row_max<T: Scalar>(z: &[T]) -> T {
    let mut m = T::neg_infinity();
    for &zi in z {
        if zi > m {
            m = zi;
        }
    }
    m
}

/// Logistic sigmoid, evaluated without overflow for either sign.
#[inline]
pub fn sigmoid<T: Scalar>(z: T) -> T {
    if z >= T::zero() {
        T::one() / (T::one() + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::one() + e)
    }
}

/// `softplus(z) = ln(1 + e^z)`, evaluated without overflow for either sign.
#[inline]
pub fn softplus<T: Scalar>(z: T) -> T {
    if z > T::zero() {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// `sqrt(softplus(z))`, Megatron-Core's `sqrtsoftplus` score.
#[inline]
pub fn sqrt_softplus<T: Scalar>(z: T) -> T {
    softplus(z).sqrt()
}

/// `d sqrt(softplus(z)) / dz = sigmoid(z) / (2 p)` from `p = sqrt(softplus(z))` alone:
/// `sigmoid(z) = 1 - exp(-softplus(z)) = -expm1(-p^2)`; 0 where `p = 0`.
#[inline]
pub fn sqrt_softplus_slope<T: Scalar>(p: T) -> T {
    if p > T::zero() {
        -(-(p * p)).exp_m1() / (T::of(2.0) * p)
    } else {
        T::zero()
    }
}

/// `sigmoid(z) / (2 p^2)` from `p = sqrt(softplus(z))`: the slope over `p`, which stays
/// finite (`-> 1/2`) as `p -> 0`, for gate terms scaled by `p / denom`.
#[inline]
pub fn sqrt_softplus_slope_over_p<T: Scalar>(p: T) -> T {
    let p2 = p * p;
    if p2 > T::zero() {
        -(-p2).exp_m1() / (T::of(2.0) * p2)
    } else {
        T::of(0.5)
    }
}

/// Writes `score(z)` into `p`.
#[inline]
pub fn score_row<T: Scalar>(score: ScoreFn, z: &[T], p: &mut [T]) {
    match score {
        ScoreFn::Softmax => {
            softmax_row(z, p);
        }
        ScoreFn::Sigmoid => {
            for (pi, &zi) in p.iter_mut().zip(z) {
                *pi = sigmoid(zi);
            }
        }
        ScoreFn::SqrtSoftplus => {
            for (pi, &zi) in p.iter_mut().zip(z) {
                *pi = sqrt_softplus(zi);
            }
        }
    }
}

/// The LBL's per-token normalisation guard (Megatron-Core's `1e-20`).
pub const LBL_NORM_EPS: f64 = 1e-20;

/// `1 / (sum p + 1e-20)`: the factor that normalises a row of element-wise scores for the LBL.
#[inline]
pub fn lbl_norm_inv<T: Scalar>(p: &[T]) -> T {
    let mut s = T::zero();
    for &v in p {
        s = s + v;
    }
    T::one() / (s + T::of(LBL_NORM_EPS))
}

/// Backward of `q = p * inv` (`inv = 1 / (sum p + eps)`) in place: `g` holds `dL/dq` on entry
/// and `dL/dp = inv (g - <g, q>)` on exit.
#[inline]
pub fn lbl_norm_backward_row<T: Scalar>(p: &[T], inv: T, g: &mut [T]) {
    let mut dot = T::zero();
    for (&gi, &pi) in g.iter().zip(p) {
        dot = dot + gi * (pi * inv);
    }
    for gi in g.iter_mut() {
        *gi = inv * (*gi - dot);
    }
}

/// Backward of the score function in place: `g` holds `dL/dp` on entry and `dL/dz` on exit.
///
/// Softmax: `dz = p ⊙ (dp - <dp, p>)`; sigmoid: `dz = dp ⊙ p ⊙ (1 - p)`; sqrt-softplus:
/// `dz = dp ⊙ sigmoid(z) / (2 p)` ([`sqrt_softplus_slope`]).
#[inline]
pub fn score_backward_row<T: Scalar>(score: ScoreFn, p: &[T], g: &mut [T]) {
    match score {
        ScoreFn::Softmax => {
            let mut dot = T::zero();
            for (&gi, &pi) in g.iter().zip(p) {
                dot = dot + gi * pi;
            }
            for (gi, &pi) in g.iter_mut().zip(p) {
                *gi = pi * (*gi - dot);
            }
        }
        ScoreFn::Sigmoid => {
            for (gi, &pi) in g.iter_mut().zip(p) {
                *gi = *gi * pi * (T::one() - pi);
            }
        }
        ScoreFn::SqrtSoftplus => {
            for (gi, &pi) in g.iter_mut().zip(p) {
                *gi = *gi * sqrt_softplus_slope(pi);
            }
        }
    }
}
