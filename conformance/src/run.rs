//! Runs a [`Router`] on a backend and downloads everything it produced, widened to `f64`, so
//! backends of any element type compare with one another and with the references.

use crate::gen::{Case, Data};
use crate::util::{down, down_idx, up};
use simbal_core::{
    Backend, LoadMetrics, LossValues, Result, Router, RouterConfig, RoutingStats, Scalar,
};

/// Everything a forward pass produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Logits `N x E`.
    pub z: Vec<f64>,
    /// Scores `N x E`.
    pub p: Vec<f64>,
    /// Gates `N x k`.
    pub gates: Vec<f64>,
    /// Indices `N x k`.
    pub idx: Vec<u32>,
    /// Dropped flags `N x k`.
    pub dropped: Vec<u32>,
    /// Kept assignments per expert.
    pub counts: Vec<u32>,
    /// Dispatch offsets `E + 1`.
    pub offsets: Vec<u32>,
    /// The meaningful prefix of the dispatch order (`offsets[E]` entries).
    pub order: Vec<u32>,
}

/// Everything a backward pass produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Backward {
    /// Loss values `(simbal, lbl, z_loss, total)`.
    pub losses: [f64; 4],
    /// `dZ`.
    pub dz: Vec<f64>,
    /// `dX` (empty on the logits path).
    pub dx: Vec<f64>,
    /// `dR` (empty on the logits path).
    pub dr: Vec<f64>,
}

/// Widens loss values.
pub fn loss_array<T: Scalar>(v: &LossValues<T>) -> [f64; 4] {
    [
        v.simbal.to_f64_lossy(),
        v.lbl.to_f64_lossy(),
        v.z_loss.to_f64_lossy(),
        v.total.to_f64_lossy(),
    ]
}

/// Downloads the forward outputs of `router`.
pub fn read_forward<B: Backend>(router: &Router<B>) -> Result<Forward> {
    let b = router.backend();
    let offsets = down_idx(b, router.dispatch_offsets()?)?;
    let mut order = down_idx(b, router.dispatch_order()?)?;
    let kept = offsets.last().copied().unwrap_or(0) as usize;
    order.truncate(kept.min(order.len()));
    Ok(Forward {
        z: down(b, router.logits()?)?,
        p: down(b, router.scores()?)?,
        gates: down(b, router.gates()?)?,
        idx: down_idx(b, router.indices()?)?,
        dropped: down_idx(b, router.dropped()?)?,
        counts: down_idx(b, router.counts()?)?,
        offsets,
        order,
    })
}

/// Uploaded inputs of a case on one backend.
pub struct Inputs<B: Backend> {
    /// Tokens.
    pub x: B::Buf,
    /// Router weight.
    pub r: B::Buf,
    /// Logits for the logits path.
    pub z: B::Buf,
    /// Gate gradient.
    pub dw: B::Buf,
    /// Selection bias.
    pub bias: Option<B::Buf>,
}

impl<B: Backend> Inputs<B> {
    /// Uploads `data`.
    pub fn new(b: &B, data: &Data) -> Result<Self> {
        Ok(Self {
            x: up(b, &data.x)?,
            r: up(b, &data.r)?,
            z: up(b, &data.z)?,
            dw: up(b, &data.dw)?,
            bias: match &data.bias {
                Some(v) => Some(up(b, v)?),
                None => None,
            },
        })
    }
}

/// Forward from tokens, then backward with the case's losses.
pub fn step<B: Backend>(
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    inp: &Inputs<B>,
) -> Result<(Forward, Backward)> {
    router.forward(&inp.x, &inp.r, inp.bias.as_ref(), case.n, case.d)?;
    let fwd = read_forward(router)?;
    let v = router.backward(&inp.x, &inp.r, &inp.dw, &case.losses, case.global(data))?;
    let b = router.backend();
    Ok((
        fwd,
        Backward {
            losses: loss_array(&v),
            dz: down(b, router.dz()?)?,
            dx: down(b, router.dx()?)?,
            dr: down(b, router.dr()?)?,
        },
    ))
}

/// Forward from logits, then backward from logits with the case's losses (no SimBal).
pub fn step_logits<B: Backend>(
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    inp: &Inputs<B>,
) -> Result<(Forward, Backward)> {
    router.forward_logits(&inp.z, inp.bias.as_ref(), case.n)?;
    let fwd = read_forward(router)?;
    let v = router.backward_logits(&inp.dw, &case.losses, case.global(data))?;
    let b = router.backend();
    Ok((
        fwd,
        Backward {
            losses: loss_array(&v),
            dz: down(b, router.dz()?)?,
            dx: Vec::new(),
            dr: Vec::new(),
        },
    ))
}

/// Statistics, load metrics and routing entropy of the last forward pass.
pub fn stats<B: Backend>(router: &mut Router<B>) -> Result<(RoutingStats, LoadMetrics, f64)> {
    let s = router.stats()?;
    let m = router.load_metrics()?;
    let h = router.routing_entropy()?.to_f64_lossy();
    Ok((s, m, h))
}

/// The smallest gap between two selection scores whose order decides the output of a token
/// (adjacent ranks among the first `k + 1` admitted experts, and the group admission boundary),
/// and between the gates at each over-full expert's capacity boundary under
/// [`simbal_core::DropPolicy::Probs`]. Gates are measured relative to `max(1, |scale|)`.
/// Backends whose scores differ by rounding agree on every index and flag when this margin
/// exceeds their rounding error; `+inf` when nothing can flip.
pub fn routing_margin(
    cfg: &RouterConfig,
    n: usize,
    p: &[f64],
    bias: Option<&[f64]>,
    idx: &[u32],
) -> f64 {
    let (e, k) = (cfg.experts, cfg.k);
    let mut margin = f64::INFINITY;
    // Ranked (score, index) pairs, best first, ties to the lower index.
    let rank = |v: &mut Vec<(f64, usize)>| {
        v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    };
    for t in 0..n {
        let pr = &p[t * e..(t + 1) * e];
        let sel: Vec<f64> = (0..e).map(|c| pr[c] + bias.map_or(0.0, |b| b[c])).collect();
        let mut admitted = vec![true; e];
        if let Some(g) = cfg.groups.filter(|g| g.top_groups < g.groups) {
            let len = e / g.groups;
            let m = (k / g.top_groups).clamp(1, len);
            let mut gs: Vec<(f64, usize)> = (0..g.groups)
                .map(|gi| {
                    let mut v: Vec<(f64, usize)> =
                        (gi * len..(gi + 1) * len).map(|c| (sel[c], c)).collect();
                    rank(&mut v);
                    (v.iter().take(m).map(|x| x.0).sum(), gi)
                })
                .collect();
            rank(&mut gs);
            margin = margin.min(gs[g.top_groups - 1].0 - gs[g.top_groups].0);
            admitted = vec![false; e];
            for &(_, gi) in &gs[..g.top_groups] {
                admitted[gi * len..(gi + 1) * len].fill(true);
            }
        }
        let mut cand: Vec<(f64, usize)> = (0..e)
            .filter(|&c| admitted[c])
            .map(|c| (sel[c], c))
            .collect();
        rank(&mut cand);
        for r in 0..k.min(cand.len().saturating_sub(1)) {
            margin = margin.min(cand[r].0 - cand[r + 1].0);
        }
    }
    if let Some(cap) = cfg.capacity {
        if cap.policy == simbal_core::DropPolicy::Probs {
            let c = cap.per_expert(n, e, k);
            let s = cfg.scale;
            let mut per: Vec<Vec<(f64, usize)>> = vec![Vec::new(); e];
            for t in 0..n {
                let pr = &p[t * e..(t + 1) * e];
                let ir = &idx[t * k..(t + 1) * k];
                let sum: f64 = ir.iter().map(|&i| pr[i as usize]).sum();
                for (j, &i) in ir.iter().enumerate() {
                    let w = if cfg.renormalize {
                        s * pr[i as usize] / sum
                    } else {
                        s * pr[i as usize]
                    };
                    per[i as usize].push((w, t * k + j));
                }
            }
            for mut v in per {
                if v.len() > c {
                    rank(&mut v);
                    let gap = v[c - 1].0 - v[c].0;
                    margin = margin.min(gap / s.abs().max(1.0));
                }
            }
        }
    }
    margin
}
