//! The router's kernels on dfdx: scores by dfdx's softmax or sigmoid with the top-k and the
//! gates on the host (dfdx has no top-k), and the backward with its dense terms (LBL, score
//! backward, z-loss) as dfdx ops around the host scatter of the gate gradient.

use crate::backend::{dx, host_vec, Dfdx, Matrix};
use crate::groups::{group_index, keep, keep_rows, normalize_rows_backward, valid, Flags};
use crate::reduce::lse_sq_sum_of;
use dfdx::shapes::{Axis, Dtype};
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::{
    BroadcastTo, ChooseFrom, Device, GatherTo, LogSumExpTo, ReshapeTo, SumTo, TryAdd, TryDiv,
    TryGt, TryMul, TrySub,
};
use simbal_core::gemm::GemmArgs;
use simbal_core::router::kernels::{
    BackwardSums, LblCoef, Logits, Route, RouteSums, RouterBackward,
};
use simbal_core::router::score::sqrt_softplus_slope_over_p;
use simbal_core::router::select::{gates_row, plain_topk_row, renorm_eps, select_row};
use simbal_core::tokens::Groups;
use simbal_core::{Backend, Result, RouterConfig, Scalar, ScoreFn};

/// [`Backend::route`]: the logits GEMM when asked, `max |Z|` when asked, then the rows.
pub(crate) fn route<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    mut a: Route<'_, Dfdx<E, D>>,
) -> Result<RouteSums<E>> {
    let (n, e, k) = (a.n, a.cfg.experts, a.cfg.k);
    if let Logits::Tokens { gemm, x, r } = a.logits {
        be.gemm(
            GemmArgs {
                gemm,
                a: x,
                b: r,
                c: &mut *a.z,
            }
            .check(be)?,
        )?;
    }
    let max_abs_z = a.request.max_abs_z.then(|| be.max_abs(a.z)).transpose()?;
    if n == 0 {
        return Ok(RouteSums { max_abs_z });
    }
    let pt = scores(a.cfg.score, Dfdx::mat(a.z, n, e)?)?;
    let ph = host_vec(&pt);
    let bias = a.bias.map(host_vec);
    let mut gh = vec![E::zero(); n * k];
    for (t, ((pr, ir), wr)) in ph
        .chunks_exact(e)
        .zip(a.idx.chunks_exact_mut(k))
        .zip(gh.chunks_exact_mut(k))
        .enumerate()
    {
        select_row(a.cfg, pr, bias.as_deref(), ir);
        gates_row(a.cfg, pr, ir, wr);
        if let Some(pl) = a.plain.as_deref_mut() {
            plain_topk_row(pr, &mut pl[t * k..(t + 1) * k]);
        }
    }
    *a.p = Dfdx::flat(pt)?;
    *a.gates = be.vector(gh)?;
    Ok(RouteSums { max_abs_z })
}

/// Scores of `n x E` logits.
fn scores<E: Scalar + Dtype, D: Device<E>>(
    score: ScoreFn,
    z: Matrix<E, D>,
) -> Result<Matrix<E, D>> {
    match score {
        ScoreFn::Softmax => dx(z.try_softmax::<Axis<1>>()),
        ScoreFn::Sigmoid => dx(z.try_sigmoid()),
        ScoreFn::SqrtSoftplus => {
            // softplus(z) = relu(z) + log1p(exp(-|z|)), with log1p(u) = u ln(1 + u) / ((1 + u)
            // - 1) (Goldberg; u itself where 1 + u rounds to 1): dfdx has no log1p.
            let u = dx(dx(dx(z.clone().try_abs())?.try_negate())?.try_exp())?;
            let w = dx(u.clone().try_add(E::one()))?;
            let d = dx(w.clone().try_sub(E::one()))?;
            let exact = dx(d.try_gt(E::zero()))?;
            let ratio = dx(dx(w.try_ln())?.try_div(d))?;
            let l1p = dx(exact.try_choose(dx(u.clone().try_mul(ratio))?, u))?;
            let sp = dx(dx(z.try_relu())?.try_add(l1p))?;
            dx(sp.try_sqrt())
        }
    }
}

/// [`Backend::router_backward`]. The gate gradient is scattered into `dP` on the host (an index
/// operation); the LBL term, the score backward and the z-loss term are dfdx ops, and the sums
/// the request asks for come from the same tensors (the z-loss's `lse`, the final `dZ`).
pub(crate) fn router_backward<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: RouterBackward<'_, Dfdx<E, D>>,
) -> Result<BackwardSums<E>> {
    let (cfg, n, e) = (a.cfg, a.n, a.cfg.experts);
    if n == 0 {
        return Ok(BackwardSums {
            lse_sq_sum: a.request.lse_sq_sum.then(E::zero),
            max_abs_dz: a.request.max_abs_dz.then(E::zero),
        });
    }
    let pt = Dfdx::mat(a.p, n, e)?;
    let zt = Dfdx::mat(a.z, n, e)?;
    let gate = gate_rows(be, &a, &pt)?;
    let mut dpt = dx(be.vector(gate.dp)?.try_reshape_like(&(n, e)))?;
    let (flags, _) = valid(be, &a.groups, n)?;
    if let Some(l) = &a.lbl {
        dpt = dx(dpt.try_add(lbl_term(be, l, &a.groups, flags.as_ref(), &pt, n, e)?))?;
    }
    let mut dzt = score_backward(cfg.score, &pt, &zt, dpt, n, e)?;
    if cfg.renormalize {
        if cfg.score == ScoreFn::Softmax {
            let mt = dx(be.vector(gate.m)?.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
            dzt = dx(dzt.try_sub(dx(pt.clone().try_mul(mt))?))?;
        }
        let sp = dx(be.vector(gate.sparse)?.try_reshape_like(&(n, e)))?;
        dzt = dx(dzt.try_add(sp))?;
    }
    let mut lse_sq_sum = None;
    if a.z_coef != E::zero() || a.request.lse_sq_sum {
        let lse: Tensor<(usize,), E, D> = dx(zt.clone().try_logsumexp::<_, Axis<1>>())?;
        if a.request.lse_sq_sum {
            lse_sq_sum = Some(lse_sq_sum_of(be, flags.as_ref(), lse.clone())?);
        }
        if a.z_coef != E::zero() {
            // A masked token gets no z-loss term: its coefficient is zeroed.
            let mut c = dx(lse.try_mul(a.z_coef))?;
            if let Some(f) = &flags {
                c = keep(be, f, c)?;
            }
            let c = dx(c.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
            let sm = match cfg.score {
                ScoreFn::Softmax => pt,
                ScoreFn::Sigmoid | ScoreFn::SqrtSoftplus => dx(zt.try_softmax::<Axis<1>>())?,
            };
            dzt = dx(dzt.try_add(dx(sm.try_mul(c))?))?;
        }
    }
    *a.dz = Dfdx::flat(dzt)?;
    let max_abs_dz = a.request.max_abs_dz.then(|| be.max_abs(a.dz)).transpose()?;
    Ok(BackwardSums {
        lse_sq_sum,
        max_abs_dz,
    })
}

/// The gate gradient's contribution, built on the host.
struct GateRows<E> {
    /// `dP` from the gates without renormalisation (`n x E`; zeros with it).
    dp: Vec<E>,
    /// With renormalisation: the gate term already taken through the score backward (`n x E`).
    sparse: Vec<E>,
    /// With softmax renormalisation: per row `m = sum_j a_j q_{i_j}`, whose `-p_c m` the caller
    /// adds as a dfdx op.
    m: Vec<E>,
}

/// Without renormalisation `dP_{i_j} = s dW_j` goes through the score backward with the LBL
/// term. With it, the gate term `a_j / denom` (`a_j = s dW_j - sum_l dW_l w_l`) is taken through
/// the score backward analytically with `q = p / denom <= 1`, as the reference does, so an
/// underflowed `denom` (saturated sigmoid rows) cannot give `inf * 0 = NaN`: softmax adds
/// `[c = i_j] a_j q_c - p_c m` (`m = sum_j a_j q_{i_j}`), sigmoid adds `a_j q_{i_j} (1 - p_{i_j})`
/// at the chosen experts.
fn gate_rows<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    a: &RouterBackward<'_, Dfdx<E, D>>,
    pt: &Matrix<E, D>,
) -> Result<GateRows<E>> {
    let cfg: &RouterConfig = a.cfg;
    let (n, e, k) = (a.n, cfg.experts, cfg.k);
    let (idx, dropped) = (a.idx, a.dropped);
    let gh = host_vec(a.gates);
    let dwh = host_vec(a.dw);
    let s = E::of(cfg.scale);
    let renorm = cfg.renormalize;
    let psel = if renorm {
        let it: Tensor<(usize, usize), usize, D> = dx(be
            .dev
            .try_tensor_from_vec(idx.iter().map(|&i| i as usize).collect(), (n, k)))?;
        let sel: Matrix<E, D> = dx(pt.clone().try_gather(it))?;
        host_vec(&sel)
    } else {
        Vec::new()
    };
    let mut out = GateRows {
        dp: vec![E::zero(); n * e],
        sparse: vec![E::zero(); if renorm { n * e } else { 0 }],
        m: vec![E::zero(); if renorm { n } else { 0 }],
    };
    for t in 0..n {
        let row = t * k..(t + 1) * k;
        let ir = &idx[row.clone()];
        let wr = &gh[row.clone()];
        let gr = &dwh[row.clone()];
        let dr = &dropped[row.clone()];
        let kept = |j: usize| if dr[j] == 0 { gr[j] } else { E::zero() };
        if !renorm {
            let dp = &mut out.dp[t * e..(t + 1) * e];
            for j in 0..k {
                dp[ir[j] as usize] += s * kept(j);
            }
            continue;
        }
        let ps = &psel[row];
        let mut sum = E::zero();
        let mut dot = E::zero();
        for j in 0..k {
            sum += ps[j];
            dot += kept(j) * wr[j];
        }
        let inv = E::one() / (sum + renorm_eps());
        let aj = |j: usize| (s * kept(j) - dot) * (ps[j] * inv);
        let sp = &mut out.sparse[t * e..(t + 1) * e];
        match cfg.score {
            ScoreFn::Softmax => {
                let mut mt = E::zero();
                for j in 0..k {
                    mt += aj(j);
                    sp[ir[j] as usize] = aj(j);
                }
                out.m[t] = mt;
            }
            ScoreFn::Sigmoid => {
                for j in 0..k {
                    sp[ir[j] as usize] = aj(j) * (E::one() - ps[j]);
                }
            }
            ScoreFn::SqrtSoftplus => {
                for j in 0..k {
                    sp[ir[j] as usize] = aj(j) * sqrt_softplus_slope_over_p(ps[j]);
                }
            }
        }
    }
    Ok(out)
}

/// The LBL's `dL/dP` rows: each valid token's group row of coefficients (runs: the rows
/// broadcast over `groups x len x E`; ids: gathered by the token's group), through the
/// per-token normalisation when the loss normalises, and zero for a masked token.
fn lbl_term<E: Scalar + Dtype, D: Device<E>>(
    be: &Dfdx<E, D>,
    l: &LblCoef<'_, Dfdx<E, D>>,
    groups: &Groups<'_, Dfdx<E, D>>,
    flags: Option<&Flags<D>>,
    pt: &Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    let mut rows: Matrix<E, D> = match *groups {
        Groups::Runs { len } => {
            let g = n / len;
            let coef = Dfdx::mat(l.coef, g, e)?;
            let coef = dx(coef.try_broadcast_like::<_, Axis<1>>(&(g, len, e)))?;
            dx(coef.try_reshape_like(&(n, e)))?
        }
        Groups::Ids { count: 0, .. } => return dx(be.dev.try_zeros_like(&(n, e))),
        Groups::Ids { ids, count } => {
            let coef = Dfdx::mat(l.coef, count, e)?;
            dx(coef.try_gather(group_index(be, ids)?))?
        }
    };
    if l.normalize {
        rows = normalize_rows_backward(pt, rows, n, e)?;
    }
    match flags {
        Some(f) => keep_rows(be, f, rows, n, e),
        None => Ok(rows),
    }
}

/// `dZ` from `dP` through the score function: softmax `p (dP - <dP, p>)`, sigmoid
/// `dP p (1 - p)`, sqrt-softplus `dP sigmoid(z) / (2 p)` (0 where `p = 0`).
fn score_backward<E: Scalar + Dtype, D: Device<E>>(
    score: ScoreFn,
    pt: &Matrix<E, D>,
    zt: &Matrix<E, D>,
    dpt: Matrix<E, D>,
    n: usize,
    e: usize,
) -> Result<Matrix<E, D>> {
    match score {
        ScoreFn::Softmax => {
            let dot: Tensor<(usize,), E, D> =
                dx(dx(dpt.clone().try_mul(pt.clone()))?.try_sum::<_, Axis<1>>())?;
            let dot = dx(dot.try_broadcast_like::<_, Axis<1>>(&(n, e)))?;
            dx(pt.clone().try_mul(dx(dpt.try_sub(dot))?))
        }
        ScoreFn::Sigmoid => {
            let one_minus = dx(dx(pt.clone().try_negate())?.try_add(E::one()))?;
            dx(dx(dpt.try_mul(pt.clone()))?.try_mul(one_minus))
        }
        ScoreFn::SqrtSoftplus => {
            let pos = dx(pt.try_gt(E::zero()))?;
            let slope =
                dx(dx(zt.clone().try_sigmoid())?.try_div(dx(pt.clone().try_mul(E::of(2.0)))?))?;
            let zeros = dx(pt.device().try_zeros_like(&(n, e)))?;
            let slope = dx(pos.try_choose(slope, zeros))?;
            dx(dpt.try_mul(slope))
        }
    }
}
