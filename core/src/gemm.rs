//! General matrix multiply, the one compute primitive every backend must provide: the
//! descriptor [`Gemm`], the kernel's arguments [`GemmArgs`] with their precondition function, and
//! the scalar reference [`gemm_reference`].

use crate::checked::Checked;
use crate::error::Result;
use crate::memory::Memory;
use crate::scalar::Scalar;
use crate::shape::check_len;

/// `C = alpha * op(A) * op(B) + beta * C`, row-major, with `op(A)` of `m x k` and `op(B)` of
/// `k x n`. `trans_a` means `A` is stored `k x m`; `trans_b` means `B` is stored `n x k`.
/// `beta = 0` overwrites `C` (its old contents, even NaN, are ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// `A` is stored transposed (`k x m`).
    pub trans_a: bool,
    /// `B` is stored transposed (`n x k`).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f64,
    /// Scale of the old `C`; 0 overwrites.
    pub beta: f64,
}

impl Gemm {
    /// `C = op(A) op(B)` of the given sizes, no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// Marks `A` as stored transposed.
    pub fn ta(mut self) -> Self {
        self.trans_a = true;
        self
    }
    /// Marks `B` as stored transposed.
    pub fn tb(mut self) -> Self {
        self.trans_b = true;
        self
    }
    /// Sets `alpha`.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets `beta` (1 accumulates into `C`).
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }
    /// Lengths `(A, B, C)` the operands must have (saturating: a product that overflows
    /// matches no buffer).
    pub fn lens(&self) -> (usize, usize, usize) {
        (
            self.m.saturating_mul(self.k),
            self.k.saturating_mul(self.n),
            self.m.saturating_mul(self.n),
        )
    }
    /// Element `(i, l)` of `op(A)`.
    #[inline]
    fn a_at<T: Scalar>(&self, a: &[T], i: usize, l: usize) -> T {
        if self.trans_a {
            a[l * self.m + i]
        } else {
            a[i * self.k + l]
        }
    }
    /// Element `(l, j)` of `op(B)`.
    #[inline]
    fn b_at<T: Scalar>(&self, b: &[T], l: usize, j: usize) -> T {
        if self.trans_b {
            b[j * self.k + l]
        } else {
            b[l * self.n + j]
        }
    }
}

/// The arguments of [`crate::Backend::gemm`]: `c = alpha op(a) op(b) + beta c`.
pub struct GemmArgs<'a, M: Memory + ?Sized> {
    /// Sizes, transposes and scales.
    pub gemm: Gemm,
    /// Operand `A`.
    pub a: &'a M::View,
    /// Operand `B`.
    pub b: &'a M::View,
    /// Result `C` (read too when `beta != 0`).
    pub c: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> GemmArgs<'a, M> {
    /// The precondition function of [`crate::Backend::gemm`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `a`, `b` and `c` have the lengths of
    /// [`Gemm::lens`] (`m k`, `k n`, `m n`).
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let (la, lb, lc) = self.gemm.lens();
        check_len("GEMM operand A", la, m.len(self.a))?;
        check_len("GEMM operand B", lb, m.len(self.b))?;
        check_len("GEMM operand C", lc, m.len(self.c))?;
        Ok(Checked::new(self))
    }
}

/// The scalar reference GEMM: a plain triple loop accumulating in `T`. Slices must have the
/// lengths of [`Gemm::lens`] (checked by [`GemmArgs::check`]).
pub fn gemm_reference<T: Scalar>(g: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    if g.m == 0 || g.n == 0 {
        return; // C is empty; `m` alone may be huge (its product with 0 checks out)
    }
    let alpha = T::of(g.alpha);
    let beta = T::of(g.beta);
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = T::zero();
            for l in 0..g.k {
                s = s + g.a_at(a, i, l) * g.b_at(b, l, j);
            }
            let cij = &mut c[i * g.n + j];
            *cij = if g.beta == 0.0 {
                alpha * s
            } else {
                alpha * s + beta * *cij
            };
        }
    }
}
