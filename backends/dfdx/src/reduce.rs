//! Reductions as dfdx ops over the valid tokens: per-group column sums (the LBL's score sums),
//! `sum lse^2` (the z-loss), the routing entropy and `max |x|` (the router's validation).

use crate::backend::{dx, Dfdx, Matrix, Vector};
use crate::groups::{keep, keep_rows, normalize_rows, valid, Flags};
use dfdx::shapes::{Axis, Dtype, HasShape};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::{
    BroadcastTo, ChooseFrom, Device, LogSumExpTo, MaxTo, ReshapeTo, SumTo, TryDiv, TryGt,
    TryMatMul, TryMul, TryNe,
};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::metrics::Entropy;
use simbal_core::tokens::{Groups, MASKED};
use simbal_core::zloss::LseSqSum;
use simbal_core::{Memory, Result, Scalar, SimbalError};

/// `out[b, c] = sum over the valid rows of group b of a[t, c]` (rows normalised first when
/// asked). Runs: a reshape to `groups x len x cols` and a sum; ids: masked rows zeroed by
/// `choose`, then one group a column sum, several a one-hot `groups x n` matmul (the scores it
/// sums are finite: a non-finite entry would reach the other groups' sums as `0 * inf`).
pub(crate) fn group_column_sums<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: GroupSums<'_, Dfdx<E, D>>,
) -> Result<()> {
    let (n, cols) = (a.n, a.cols);
    let groups = a.groups.count(n);
    if n == 0 || cols == 0 || groups == 0 {
        *a.out = be.zeros(groups * cols)?;
        return Ok(());
    }
    let mut at = Dfdx::mat(a.a, n, cols)?;
    if a.normalize {
        at = normalize_rows(at, n, cols)?;
    }
    let sums: Matrix<E, D> = match a.groups {
        Groups::Runs { len } => {
            let a3 = dx(at.try_reshape_like(&(groups, len, cols)))?;
            dx(a3.try_sum::<_, Axis<1>>())?
        }
        Groups::Ids { ids, .. } => {
            let (flags, _) = valid(be, &a.groups, n)?;
            if let Some(f) = &flags {
                at = keep_rows(be, f, at, n, cols)?;
            }
            if groups == 1 {
                let s: Vector<E, D> = dx(at.try_sum::<_, Axis<0>>())?;
                Dfdx::mat(&s, 1, cols)?
            } else {
                let mut onehot = vec![E::zero(); groups * n];
                for (t, &g) in ids.iter().enumerate() {
                    if g != MASKED {
                        onehot[g as usize * n + t] = E::one();
                    }
                }
                let oh = Dfdx::mat(&be.vector(onehot)?, groups, n)?;
                dx(oh.try_matmul(at))?
            }
        }
    };
    *a.out = Dfdx::flat(sums)?;
    Ok(())
}

/// `sum_{valid t} lse(z_t)^2` over `n x e` logits (0 without rows; the reference sums no row
/// for `e = 0` either).
pub(crate) fn lse_sq_sum<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: LseSqSum<'_, Dfdx<E, D>>,
) -> Result<E> {
    let (n, e) = (a.n, a.e);
    if n == 0 || e == 0 {
        return Ok(E::zero());
    }
    let lse = dx(Dfdx::mat(a.z, n, e)?.try_logsumexp::<_, Axis<1>>())?;
    let (flags, _) = valid(be, &a.groups, n)?;
    lse_sq_sum_of(be, flags.as_ref(), lse)
}

/// `sum lse^2` of per-row `lse` values, over the flagged rows when there are flags.
pub(crate) fn lse_sq_sum_of<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    flags: Option<&Flags<D>>,
    lse: Vector<E, D>,
) -> Result<E> {
    let sq = dx(lse.try_square())?;
    let sq = match flags {
        Some(f) => keep(be, f, sq)?,
        None => sq,
    };
    let total: Tensor<(), E, D> = dx(sq.try_sum::<_, Axis<0>>())?;
    Dfdx::scalar(&total)
}

/// Mean per-token entropy of the valid tokens' scores normalised per row; all-zero rows count
/// 0, and no valid token gives 0.
pub(crate) fn routing_entropy<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: Entropy<'_, Dfdx<E, D>>,
) -> Result<E> {
    let (n, e) = (a.n, a.e);
    let (flags, count) = valid(be, &a.groups, n)?;
    if count == 0 {
        return Ok(E::zero());
    }
    let pt = Dfdx::mat(a.p, n, e)?;
    let s: Tensor<(usize,), E, D> = dx(pt.clone().try_sum::<_, Axis<1>>())?;
    let s = dx(s.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
    let pos_sum = dx(s.try_gt(E::zero()))?;
    let q = dx(pt.try_div(s))?;
    let zeros = dx(be.dev.try_zeros_like(&(n, e)))?;
    let ones = dx(be.dev.try_ones_like(&(n, e)))?;
    let q = dx(pos_sum.try_choose(q, zeros))?;
    let pos = dx(q.try_gt(E::zero()))?;
    // Entries that are not positive become 1, whose `q ln q` is 0.
    let safe = dx(pos.try_choose(q, ones))?;
    let h = dx(safe.clone().try_mul(dx(safe.try_ln())?))?;
    let h: Vector<E, D> = dx(h.try_sum::<_, Axis<1>>())?;
    let h = match &flags {
        Some(f) => keep(be, f, h)?,
        None => h,
    };
    let total: Tensor<(), E, D> = dx(h.try_sum::<(), _>())?;
    let h = -Dfdx::scalar(&total)? / E::of_usize(count);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(SimbalError::Overflow {
            what: "routing entropy",
        })
    }
}

/// `max |x|` by dfdx reductions; dfdx's max skips NaN, so NaNs are counted separately.
pub(crate) fn max_abs<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    buf: &Vector<E, D>,
) -> Result<E> {
    let len = buf.shape().0;
    if len == 0 {
        return Ok(E::zero());
    }
    let nan = dx(buf.try_ne(buf))?;
    let ones = dx(be.dev.try_ones_like(&(len,)))?;
    let zeros = dx(be.dev.try_zeros_like(&(len,)))?;
    let nans: Tensor<(), E, D> = dx(dx(nan.try_choose(ones, zeros))?.try_sum::<(), _>())?;
    if Dfdx::scalar(&nans)? > E::zero() {
        return Ok(E::nan());
    }
    let m: Tensor<(), E, D> = dx(dx(buf.clone().try_abs())?.try_max::<(), _>())?;
    Dfdx::scalar(&m)
}
