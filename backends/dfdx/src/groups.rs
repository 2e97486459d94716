//! The token mask and groups ([`Groups`]) as dfdx tensors: the valid tokens as a boolean
//! vector (masked rows are replaced by zeros with `choose`, so a masked row's values never
//! reach a result), the per-token group ids as a `usize` index tensor for `gather`, and the
//! per-token normalisation of element-wise scores the LBL uses.

use crate::backend::{dx, Dfdx, Matrix, Vector};
use dfdx::shapes::{Axis, Dtype, HasShape};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::{BroadcastTo, ChooseFrom, Device, SumTo, TryAdd, TryGt, TryMul, TrySub};
use simbal_core::router::score::LBL_NORM_EPS;
use simbal_core::tokens::{Groups, MASKED};
use simbal_core::{Result, Scalar};

/// A boolean vector of `n` entries.
pub(crate) type Flags<D> = Tensor<(usize,), bool, D>;

/// The valid tokens of `groups` (`None`: runs, every token valid) and their number.
pub(crate) fn valid<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    groups: &Groups<'_, Dfdx<E, D>>,
    n: usize,
) -> Result<(Option<Flags<D>>, usize)> {
    match *groups {
        Groups::Runs { .. } => Ok((None, n)),
        Groups::Ids { ids, .. } => {
            let w: Vec<E> = ids
                .iter()
                .map(|&g| if g == MASKED { E::zero() } else { E::one() })
                .collect();
            let count = ids.iter().filter(|&&g| g != MASKED).count();
            Ok((Some(dx(be.vector(w)?.try_gt(E::zero()))?), count))
        }
    }
}

/// Each token's group as a `usize` index (masked tokens read group 0; their rows are zeroed by
/// [`keep_rows`] afterwards).
pub(crate) fn group_index<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    ids: &[u32],
) -> Result<Tensor<(usize,), usize, D>> {
    let host: Vec<usize> = ids
        .iter()
        .map(|&g| if g == MASKED { 0 } else { g as usize })
        .collect();
    let len = host.len();
    dx(be.dev.try_tensor_from_vec(host, (len,)))
}

/// The rows of `t` (`n x e`) whose flag is set, zeros elsewhere.
pub(crate) fn keep_rows<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    flags: &Flags<D>,
    t: Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    let f = dx(flags.clone().try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
    let zeros = dx(be.dev.try_zeros_like(&(n, e)))?;
    dx(f.try_choose(t, zeros))
}

/// The entries of `v` whose flag is set, zeros elsewhere.
pub(crate) fn keep<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    flags: &Flags<D>,
    v: Vector<E, D>,
) -> Result<Vector<E, D>> {
    let len = v.shape().0;
    let zeros = dx(be.dev.try_zeros_like(&(len,)))?;
    dx(flags.clone().try_choose(v, zeros))
}

/// `1 / (sum p + 1e-20)` per row, broadcast over the row (`n x e`).
fn norm_inv<E: Scalar + Dtype, D: Device<E>>(
    pt: &Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    let s: Vector<E, D> = dx(pt.clone().try_sum::<_, Axis<1>>())?;
    let inv = dx(dx(s.try_add(E::of(LBL_NORM_EPS)))?.try_recip())?;
    dx(inv.try_broadcast_like::<_, Axis<1>>(&(n, e)))
}

/// The LBL's scores of element-wise score functions: `q = p / (sum p + 1e-20)` per row.
pub(crate) fn normalize_rows<E: Scalar + Dtype, D: Device<E>>(
    pt: Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    let inv = norm_inv(&pt, n, e)?;
    dx(pt.try_mul(inv))
}

/// Backward of [`normalize_rows`]: `g = dL/dq` to `dL/dp = inv (g - <g, q>)`.
pub(crate) fn normalize_rows_backward<E: Scalar + Dtype, D: Device<E>>(
    pt: &Matrix<E, D>,
    g: Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    let inv = norm_inv(pt, n, e)?;
    let q = dx(pt.clone().try_mul(inv.clone()))?;
    let dot: Vector<E, D> = dx(dx(g.clone().try_mul(q))?.try_sum::<_, Axis<1>>())?;
    let dot = dx(dot.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
    dx(inv.try_mul(dx(g.try_sub(dot))?))
}
