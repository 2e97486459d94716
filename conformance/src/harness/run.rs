//! Runs a [`Router`] on a backend and downloads everything it produced, widened to `f64`, so
//! backends of any element type compare with one another and with the references.
//!
//! A pass borrows its router (and so its backend) until it is dropped; its buffers are read
//! through `io`, a second instance of the same backend from the check's `make`, which shares
//! the router's memory (a clone of one client).

use crate::harness::gen::{Case, Data};
use crate::harness::util::{down, down_idx, fresh, opt_view, up, up_opt, Ctx};
use proptest::test_runner::TestCaseError;
use simbal_core::memory::{idx_view, view};
use simbal_core::{
    Backend, Batch, Gradients, LoadMetrics, LogitGradients, LossValues, Memory, Pass, Result,
    Router, RouterConfig, Routing, RoutingStats, Scalar,
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

/// Downloads a routing (what a forward pass wrote) through `io`, an instance of the same
/// backend that shares its memory.
pub fn read_forward<M: Memory>(io: &M, routing: &Routing<M>) -> Result<Forward> {
    let offsets = down_idx(io, routing.dispatch_offsets())?;
    let mut order = down_idx(io, routing.dispatch_order())?;
    let kept = offsets.last().copied().unwrap_or(0) as usize;
    order.truncate(kept.min(order.len()));
    Ok(Forward {
        z: down(io, routing.logits())?,
        p: down(io, routing.scores())?,
        gates: down(io, routing.gates())?,
        idx: down_idx(io, routing.indices())?,
        dropped: down_idx(io, routing.dropped())?,
        counts: down_idx(io, routing.counts())?,
        offsets,
        order,
    })
}

/// Downloads the result of a backward pass from tokens.
pub fn read_backward<M: Memory>(io: &M, g: &Gradients<'_, M>) -> Result<Backward> {
    Ok(Backward {
        losses: loss_array(&g.losses),
        dz: down(io, g.dz)?,
        dx: down(io, g.dx)?,
        dr: down(io, g.dr)?,
    })
}

/// Downloads the result of a backward pass from logits (`dX`, `dR` empty).
pub fn read_logit_backward<M: Memory>(io: &M, g: &LogitGradients<'_, M>) -> Result<Backward> {
    Ok(Backward {
        losses: loss_array(&g.losses),
        dz: down(io, g.dz)?,
        dx: Vec::new(),
        dr: Vec::new(),
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
    /// Token mask.
    pub mask: Option<B::IdxBuf>,
    /// Packed-sequence offsets.
    pub offsets: Option<B::IdxBuf>,
}

impl<B: Backend> Inputs<B> {
    /// Uploads `data`.
    pub fn new(b: &B, data: &Data) -> Result<Self> {
        Ok(Self {
            x: up(b, &data.x)?,
            r: up(b, &data.r)?,
            z: up(b, &data.z)?,
            dw: up(b, &data.dw)?,
            bias: up_opt(b, data.bias.as_deref())?,
            mask: data.mask.as_deref().map(|m| b.idx_upload(m)).transpose()?,
            offsets: data
                .offsets
                .as_deref()
                .map(|o| b.idx_upload(o))
                .transpose()?,
        })
    }
    /// What the batch carries besides `X`: bias, mask, offsets.
    pub fn batch(&self) -> Batch<'_, B> {
        Batch {
            bias: self.bias(),
            mask: self.mask.as_ref().map(idx_view::<B>),
            offsets: self.offsets.as_ref().map(idx_view::<B>),
        }
    }
    /// Tokens.
    pub fn x(&self) -> &B::View {
        view::<B>(&self.x)
    }
    /// Router weight.
    pub fn r(&self) -> &B::View {
        view::<B>(&self.r)
    }
    /// Logits.
    pub fn z(&self) -> &B::View {
        view::<B>(&self.z)
    }
    /// Gate gradient.
    pub fn dw(&self) -> &B::View {
        view::<B>(&self.dw)
    }
    /// Selection bias.
    pub fn bias(&self) -> Option<&B::View> {
        opt_view::<B>(&self.bias)
    }
}

/// Uploads `data` through one instance of the backend `make` builds, runs a router of `cfg` on
/// another forward from its tokens, and gives `f` the transfer instance, the inputs and the pass.
pub fn with_pass<B: Backend, T>(
    make: &dyn Fn() -> Option<B>,
    cfg: RouterConfig,
    data: &Data,
    f: impl FnOnce(&B, &Inputs<B>, Pass<'_, B>) -> std::result::Result<T, TestCaseError>,
) -> std::result::Result<T, TestCaseError> {
    let io = fresh(make);
    let inp = Inputs::new(&io, data).ctx("upload")?;
    let mut router = Router::new(fresh(make), cfg).ctx("Router::new")?;
    let pass = router
        .forward_batch(inp.x(), inp.r(), inp.batch())
        .ctx("forward")?;
    f(&io, &inp, pass)
}

/// Which router path a check drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// From tokens, then the backward of the forward's pass.
    Tokens,
    /// From tokens; then, the forward's pass gone, the backward through [`Router::resume`].
    Resumed,
    /// From logits, then the backward of that pass (no SimBal).
    Logits,
}

/// A forward and backward along `path` with the case's losses: what both wrote.
pub fn step<B: Backend>(
    path: Path,
    io: &B,
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    inp: &Inputs<B>,
) -> Result<(Forward, Backward)> {
    let (dw, global) = (inp.dw(), case.global(data));
    let (x, r) = (inp.x(), inp.r());
    match path {
        Path::Tokens => {
            let mut pass = router.forward_batch(x, r, inp.batch())?;
            let fwd = read_forward(io, &pass)?;
            let g = pass.backward(dw, &case.losses, global)?;
            Ok((fwd, read_backward(io, &g)?))
        }
        Path::Resumed => {
            router.forward_batch(x, r, inp.batch())?;
            let fwd = read_forward(io, router.routing()?)?;
            let mut pass = router.resume(x, r)?;
            let g = pass.backward(dw, &case.losses, global)?;
            Ok((fwd, read_backward(io, &g)?))
        }
        Path::Logits => {
            let mut pass = router.forward_logits_batch(inp.z(), inp.batch())?;
            let fwd = read_forward(io, &pass)?;
            let g = pass.backward(dw, &case.losses, global)?;
            Ok((fwd, read_logit_backward(io, &g)?))
        }
    }
}

/// Statistics, load metrics and routing entropy of one forward pass.
pub type StatsOf = (RoutingStats, LoadMetrics, f64);

/// Statistics, load metrics and routing entropy of the last forward pass.
pub fn stats<B: Backend>(router: &Router<B>) -> Result<StatsOf> {
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
        // The plain top-k of the scores alone (the LBL's routed counts).
        let mut plain: Vec<(f64, usize)> = (0..e).map(|c| (pr[c], c)).collect();
        rank(&mut plain);
        for r in 0..k.min(e - 1) {
            margin = margin.min(plain[r].0 - plain[r + 1].0);
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
