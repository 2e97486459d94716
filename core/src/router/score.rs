//! Score functions (softmax, sigmoid) and their backward, one token row at a time.

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
    }
}

/// Backward of the score function in place: `g` holds `dL/dp` on entry and `dL/dz` on exit.
///
/// Softmax: `dz = p ⊙ (dp - <dp, p>)`; sigmoid: `dz = dp ⊙ p ⊙ (1 - p)`.
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
    }
}
