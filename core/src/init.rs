//! Initialisation: a small seedable RNG and orthogonal init (Saxe et al.) by Householder QR.

use crate::config::WeightLayout;
use crate::error::Result;
use crate::scalar::Scalar;
use crate::shape::{check_dims, check_len};
use alloc::vec;
use alloc::vec::Vec;

/// xoshiro256++ seeded through SplitMix64: fast, deterministic on every platform, `no_std`.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
            spare: None,
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n >= 1`; 0 for `n = 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            ((self.next_u64() as u128 * n as u128) >> 64) as usize
        }
    }

    /// Standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        use num_traits::Float as F;
        let u1 = 1.0 - self.uniform(); // in (0, 1]
        let u2 = self.uniform();
        let r = F::sqrt(-2.0 * F::ln(u1));
        let th = 2.0 * core::f64::consts::PI * u2;
        self.spare = Some(r * F::sin(th));
        r * F::cos(th)
    }

    /// Fills `out` with `N(0, std^2)` samples.
    pub fn fill_normal<T: Scalar>(&mut self, std: f64, out: &mut [T]) {
        for v in out {
            *v = T::of(self.normal() * std);
        }
    }
}

/// Replaces the `rows x cols` row-major matrix `a` (`rows >= cols`) with the first `cols` columns
/// of `Q` of its Householder QR, signs fixed so that `diag(R) > 0`. Columns become orthonormal.
fn householder_q<T: Scalar>(rows: usize, cols: usize, a: &mut [T]) {
    let mut vs: Vec<T> = vec![T::zero(); rows * cols]; // v_j stored in column j, rows j..
    let mut diag_sign = vec![T::one(); cols];
    for j in 0..cols {
        let mut norm = T::zero();
        for i in j..rows {
            norm = norm + a[i * cols + j] * a[i * cols + j];
        }
        let norm = norm.sqrt();
        let x0 = a[j * cols + j];
        let alpha = if x0 >= T::zero() { -norm } else { norm };
        // v = x - alpha e1, then normalised.
        let mut vnorm = T::zero();
        for i in j..rows {
            let v = if i == j {
                a[i * cols + j] - alpha
            } else {
                a[i * cols + j]
            };
            vs[i * cols + j] = v;
            vnorm = vnorm + v * v;
        }
        let vnorm = vnorm.sqrt();
        if vnorm > T::zero() {
            for i in j..rows {
                vs[i * cols + j] = vs[i * cols + j] / vnorm;
            }
            for c in j..cols {
                let mut dot = T::zero();
                for i in j..rows {
                    dot = dot + vs[i * cols + j] * a[i * cols + c];
                }
                for i in j..rows {
                    a[i * cols + c] = a[i * cols + c] - T::of(2.0) * vs[i * cols + j] * dot;
                }
            }
        }
        // R_jj is now a[j, j] (= alpha, or x0 when the column was already reduced).
        diag_sign[j] = if a[j * cols + j] < T::zero() {
            -T::one()
        } else {
            T::one()
        };
    }
    // Q = H_0 ... H_{cols-1} I[:, :cols], applied right to left.
    for v in a.iter_mut() {
        *v = T::zero();
    }
    for j in 0..cols {
        a[j * cols + j] = T::one();
    }
    for j in (0..cols).rev() {
        for c in 0..cols {
            let mut dot = T::zero();
            for i in j..rows {
                dot = dot + vs[i * cols + j] * a[i * cols + c];
            }
            for i in j..rows {
                a[i * cols + c] = a[i * cols + c] - T::of(2.0) * vs[i * cols + j] * dot;
            }
        }
    }
    for i in 0..rows {
        for (c, s) in diag_sign.iter().enumerate() {
            a[i * cols + c] = a[i * cols + c] * *s;
        }
    }
}

/// Turns a Gaussian `D x E` matrix (given in `layout`) into an orthogonal one in place: with
/// `D >= E` its columns are orthonormal (`R^T R = I`), with `D < E` its rows are.
///
/// # Errors
/// [`crate::SimbalError::ZeroDim`] for `d = 0` or `e = 0`;
/// [`crate::SimbalError::LengthMismatch`] unless `r` holds `D x E`.
pub fn orthogonalize<T: Scalar>(
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &mut [T],
) -> Result<()> {
    check_dims(1, d, e)?;
    check_len("router weight", d * e, r.len())?;
    // Work on the tall orientation: D x E when D >= E, else E x D.
    let tall_is_dxe = d >= e;
    let (rows, cols) = if tall_is_dxe { (d, e) } else { (e, d) };
    let stored_is_tall = (layout == WeightLayout::DxE) == tall_is_dxe;
    if stored_is_tall {
        householder_q(rows, cols, r);
    } else {
        let mut t = vec![T::zero(); rows * cols];
        for i in 0..cols {
            for j in 0..rows {
                t[j * cols + i] = r[i * rows + j];
            }
        }
        householder_q(rows, cols, &mut t);
        for i in 0..cols {
            for j in 0..rows {
                r[i * rows + j] = t[j * cols + i];
            }
        }
    }
    Ok(())
}

/// Orthogonal initialisation of a `D x E` router weight in `layout` from `seed`.
///
/// ```
/// use simbal_core::{orthogonal_init, orthogonality_error, WeightLayout};
/// let r: Vec<f64> = orthogonal_init(WeightLayout::DxE, 16, 4, 7)?;
/// let (mean_sq, max_abs) = orthogonality_error(WeightLayout::DxE, 16, 4, &r)?;
/// assert!(max_abs < 1e-12 && mean_sq < 1e-24);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
///
/// # Errors
/// [`crate::SimbalError::ZeroDim`] for `d = 0` or `e = 0`;
/// [`crate::SimbalError::LengthMismatch`] when `D x E` overflows.
pub fn orthogonal_init<T: Scalar>(
    layout: WeightLayout,
    d: usize,
    e: usize,
    seed: u64,
) -> Result<Vec<T>> {
    check_dims(1, d, e)?;
    let len = crate::shape::product("router weight", d, e)?;
    let mut r = vec![T::zero(); len];
    Rng::new(seed).fill_normal(1.0, &mut r);
    orthogonalize(layout, d, e, &mut r)?;
    Ok(r)
}
