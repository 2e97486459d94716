//! Reductions as dfdx ops: per-group column sums (the LBL's score sums), `sum lse^2` (the
//! z-loss), the routing entropy and `max |x|` (the router's validation).

use crate::backend::{dx, Dfdx, Vector};
use dfdx::shapes::{Axis, Dtype, HasShape};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::{
    BroadcastTo, ChooseFrom, Device, LogSumExpTo, MaxTo, ReshapeTo, SumTo, TryDiv, TryGt, TryMul,
    TryNe,
};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::metrics::Entropy;
use simbal_core::{Memory, Result, Scalar, SimbalError};

/// `out[b, c] = sum over group b's rows of a[t, c]`.
pub(crate) fn group_column_sums<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: GroupSums<'_, Dfdx<E, D>>,
) -> Result<()> {
    let (n, cols) = (a.n, a.cols);
    let groups = n / a.group_len;
    if n == 0 || cols == 0 {
        *a.out = be.zeros(groups * cols)?;
        return Ok(());
    }
    let a3 = dx(Dfdx::mat(a.a, n, cols)?.try_reshape_like(&(groups, a.group_len, cols)))?;
    let sums: Tensor<(usize, usize), E, D> = dx(a3.try_sum::<_, Axis<1>>())?;
    *a.out = Dfdx::flat(sums)?;
    Ok(())
}

/// `sum_t lse(z_t)^2` over `n x e` logits.
pub(crate) fn lse_sq_sum<E: Scalar + Dtype, D: Device<E>>(
    n: usize,
    e: usize,
    z: &Vector<E, D>,
) -> Result<E> {
    if n == 0 || e == 0 {
        // An empty row's lse is -inf, like the reference; no rows sum to 0.
        return Ok(if n == 0 { E::zero() } else { E::infinity() });
    }
    lse_sq_sum_of(dx(Dfdx::mat(z, n, e)?.try_logsumexp::<_, Axis<1>>())?)
}

/// `sum lse^2` of per-row `lse` values.
pub(crate) fn lse_sq_sum_of<E: Scalar + Dtype, D: Device<E>>(lse: Vector<E, D>) -> Result<E> {
    let total: Tensor<(), E, D> = dx(dx(lse.try_square())?.try_sum::<_, Axis<0>>())?;
    Dfdx::scalar(&total)
}

/// Mean per-token entropy of the scores normalised per row; all-zero rows count 0.
pub(crate) fn routing_entropy<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: Entropy<'_, Dfdx<E, D>>,
) -> Result<E> {
    let (n, e) = (a.n, a.e);
    let pt = Dfdx::mat(a.p, n, e)?;
    let s: Tensor<(usize,), E, D> = dx(pt.clone().try_sum::<_, Axis<1>>())?;
    let s = dx(s.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
    let valid = dx(s.try_gt(E::zero()))?;
    let q = dx(pt.try_div(s))?;
    let zeros = dx(be.dev.try_zeros_like(&(n, e)))?;
    let ones = dx(be.dev.try_ones_like(&(n, e)))?;
    let q = dx(valid.try_choose(q, zeros))?;
    let pos = dx(q.try_gt(E::zero()))?;
    // Masked entries become 1, whose `q ln q` is 0.
    let safe = dx(pos.try_choose(q, ones))?;
    let h = dx(safe.clone().try_mul(dx(safe.try_ln())?))?;
    let total: Tensor<(), E, D> = dx(h.try_sum::<(), _>())?;
    let h = -Dfdx::scalar(&total)? / E::of_usize(n);
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
