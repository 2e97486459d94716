//! SimBal's kernels as dfdx ops: the element-wise pass on the Gram matrix, and ScaleFree's
//! column normalisation with its backward. The GEMMs around them are the backend's `matmul`.

use crate::backend::{dx, Dfdx, Matrix, Vector};
use dfdx::shapes::{Axis, Dtype, HasShape};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::{
    BroadcastTo, ChooseFrom, Device, SumTo, TryAdd, TryDiv, TryGt, TryLt, TryMul, TrySub,
};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::{Memory, Result, Scalar, SimBalNorm};

/// The Gram matrix `G` becomes the multiplier `M` (`dL/dR = R M`); returns the loss value.
pub(crate) fn simbal_residual<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: SimbalResidual<'_, Dfdx<E, D>>,
) -> Result<E> {
    let e = a.e;
    if e == 0 {
        return Ok(E::zero());
    }
    let lambda = E::of(a.cfg.lambda);
    let g = dx(Dfdx::mat(a.gram, e, e)?.try_sub(eye(be, e)?))?;
    let (loss_t, m) = match a.cfg.norm {
        SimBalNorm::L1 => {
            let ones = dx(be.dev.try_ones_like(&(e, e)))?;
            let neg = dx(ones.clone().try_negate())?;
            let zeros = dx(be.dev.try_zeros_like(&(e, e)))?;
            let pos = dx(g.try_gt(E::zero()))?;
            let negm = dx(g.try_lt(E::zero()))?;
            let sign = dx(pos.try_choose(ones, dx(negm.try_choose(neg, zeros))?))?;
            let l = dx(dx(g.try_abs())?.try_sum::<(), _>())?;
            (l, dx(sign.try_mul(E::of(2.0) * lambda))?)
        }
        SimBalNorm::FrobeniusSq => {
            let l = dx(dx(g.clone().try_square())?.try_sum::<(), _>())?;
            (l, dx(g.try_mul(E::of(4.0) * lambda))?)
        }
        SimBalNorm::ScaleFree => {
            let ee = E::of_usize(e) * E::of_usize(e);
            let l = dx(dx(g.clone().try_square())?.try_sum::<(), _>())?;
            (l, dx(dx(g.try_mul(E::of(4.0) * lambda))?.try_div(ee))?)
        }
    };
    let sum: E = Dfdx::scalar(&loss_t)?;
    *a.gram = Dfdx::flat(m)?;
    Ok(match a.cfg.norm {
        SimBalNorm::ScaleFree => lambda * sum / (E::of_usize(e) * E::of_usize(e)),
        _ => lambda * sum,
    })
}

/// Column norms of the weight and the weight with unit columns (a zero column stays zero).
pub(crate) fn normalize_columns<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: NormalizeColumns<'_, Dfdx<E, D>>,
) -> Result<()> {
    let (d, e) = (a.d, a.e);
    if d == 0 || e == 0 {
        *a.norms = be.zeros(e)?;
        return Ok(());
    }
    let rt = Dfdx::as_dxe(a.layout, d, e, a.r)?;
    let nrm: Vector<E, D> =
        dx(dx(dx(rt.clone().try_square())?.try_sum::<_, Axis<0>>())?.try_sqrt())?;
    let inv = recip_per_column(be, nrm.clone(), d)?;
    *a.rn = Dfdx::store_layout(a.layout, dx(rt.try_mul(inv))?)?;
    *a.norms = nrm;
    Ok(())
}

/// `grad += (G - R_n diag(<R_n, G>_col)) / norms`: the gradient through the normalisation.
pub(crate) fn scale_free_project<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: ScaleFreeProject<'_, Dfdx<E, D>>,
) -> Result<()> {
    if a.d == 0 || a.e == 0 {
        return Ok(());
    }
    let (d, e) = (a.d, a.e);
    let rnt = Dfdx::as_dxe(a.layout, d, e, a.rn)?;
    let gt = Dfdx::as_dxe(a.layout, d, e, a.g)?;
    let old = Dfdx::as_dxe(a.layout, d, e, a.grad)?;
    let dot: Vector<E, D> = dx(dx(rnt.clone().try_mul(gt.clone()))?.try_sum::<_, Axis<0>>())?;
    let dot = dx(dot.try_broadcast_like::<_, Axis<0>>(&(d, e)))?;
    let inv = recip_per_column(be, a.norms.clone(), d)?;
    let v = dx(dx(gt.try_sub(dx(rnt.try_mul(dot))?))?.try_mul(inv))?;
    *a.grad = Dfdx::store_layout(a.layout, dx(old.try_add(v))?)?;
    Ok(())
}

/// `e x e` identity on the device.
fn eye<E: Scalar + Dtype, D: Device<E>>(be: &Dfdx<E, D>, e: usize) -> Result<Matrix<E, D>> {
    let upper = dx(be.dev.try_upper_tri_like(&(e, e), E::one(), 0isize))?;
    let lower = dx(be.dev.try_lower_tri_like(&(e, e), E::one(), 0isize))?;
    dx(upper.try_mul(lower))
}

/// `1 / x` where `x > 0`, else 0 (a zero column stays zero), per column of a `d x E` matrix:
/// the scale of both the normalisation and its backward.
fn recip_per_column<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    x: Vector<E, D>,
    d: usize,
) -> Result<Matrix<E, D>> {
    let len = x.shape().0;
    let pos = dx(x.try_gt(E::zero()))?;
    let zeros: Tensor<(usize,), E, D> = dx(be.dev.try_zeros_like(&(len,)))?;
    let inv = dx(pos.try_choose(dx(x.try_recip())?, zeros))?;
    dx(inv.try_broadcast_like::<_, Axis<0>>(&(d, len)))
}
