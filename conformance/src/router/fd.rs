//! The router's analytic gradients against central finite differences (machinery and
//! tolerances in [`crate::harness::fd`]). The objective is the training objective of the SPEC's
//! backward pass, `f = sum_tj gates_tj * dW_tj + total auxiliary loss`, differentiated w.r.t.
//! `X` and `R` ([`router_objective`]) and w.r.t. `Z` on the logits path ([`logits_objective`]).

use crate::harness::fd::{check_coords, params, reject_l1_kink, Eval};
use crate::harness::gen::{self, Case, Data, Limits, LossSet};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{idx_view, view};
use simbal_core::{Backend, Batch, Router, Routing, Scalar};

/// The objective and the routing of one forward pass, with the gradients its backward gave
/// (`dX`, `dR` from tokens, `dZ` from logits).
struct Point {
    eval: Eval,
    grads: Vec<Vec<f64>>,
}

/// `sum gates * dW + total` of one forward/backward on `router` at `(x, r)`, with `dX`, `dR`.
fn eval_tokens<B: Backend>(
    io: &B,
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    (x, r, dw): (&[f64], &[f64], &[f64]),
) -> Result<Point, TestCaseError> {
    let xb = up(io, x).ctx("upload X")?;
    let rb = up(io, r).ctx("upload R")?;
    let dwb = up(io, dw).ctx("upload dW")?;
    let bufs = BatchBufs::upload(io, data)?;
    let batch = bufs.batch();
    let mut pass = router
        .forward_batch(view::<B>(&xb), view::<B>(&rb), batch)
        .ctx("forward")?;
    let g = pass
        .backward(view::<B>(&dwb), &case.losses, case.global(data))
        .ctx("backward")?;
    let grads = vec![
        down(io, g.dx).ctx("download dX")?,
        down(io, g.dr).ctx("download dR")?,
    ];
    let total = g.losses.total.to_f64_lossy();
    Ok(Point {
        eval: objective(io, &pass, dw, total)?,
        grads,
    })
}

/// The case's selection bias, token mask and packed-sequence offsets, uploaded.
struct BatchBufs<B: Backend> {
    bias: Option<B::Buf>,
    mask: Option<B::IdxBuf>,
    offsets: Option<B::IdxBuf>,
}

impl<B: Backend> BatchBufs<B> {
    fn upload(io: &B, data: &Data) -> Result<Self, TestCaseError> {
        let up_idx = |v: &Option<Vec<u32>>| v.as_deref().map(|v| io.idx_upload(v)).transpose();
        Ok(Self {
            bias: up_opt(io, data.bias.as_deref()).ctx("upload bias")?,
            mask: up_idx(&data.mask).ctx("upload mask")?,
            offsets: up_idx(&data.offsets).ctx("upload offsets")?,
        })
    }

    /// The pass's batch fields, viewing these buffers.
    fn batch(&self) -> Batch<'_, B> {
        Batch {
            bias: opt_view::<B>(&self.bias),
            mask: self.mask.as_ref().map(idx_view::<B>),
            offsets: self.offsets.as_ref().map(idx_view::<B>),
        }
    }
}

/// `sum gates * dW + total` of a pass's routing, with the routing's decisions.
fn objective<B: Backend>(
    io: &B,
    routing: &Routing<B>,
    dw: &[f64],
    total: f64,
) -> Result<Eval, TestCaseError> {
    let gates = down(io, routing.gates()).ctx("download gates")?;
    let lin: f64 = gates.iter().zip(dw).map(|(g, w)| g * w).sum();
    // The plain top-k (the LBL's routed counts) decides too: a step across its boundary is a
    // kink as much as one across the selection's.
    let mut idx = down_idx(io, routing.indices()).ctx("download indices")?;
    idx.extend(down_idx(io, routing.plain_indices()).ctx("download plain top-k")?);
    Ok(Eval {
        f: lin + total,
        idx,
        dropped: down_idx(io, routing.dropped()).ctx("download dropped")?,
    })
}

/// `sum gates * dW + total` on the logits path at `z`, with `dZ`.
fn eval_logits<B: Backend>(
    io: &B,
    router: &mut Router<B>,
    case: &Case,
    data: &Data,
    z: &[f64],
    dw: &[f64],
) -> Result<Point, TestCaseError> {
    let zb = up(io, z).ctx("upload Z")?;
    let dwb = up(io, dw).ctx("upload dW")?;
    let bufs = BatchBufs::upload(io, data)?;
    let batch = bufs.batch();
    let mut pass = router
        .forward_logits_batch(view::<B>(&zb), batch)
        .ctx("forward_logits")?;
    let g = pass
        .backward(view::<B>(&dwb), &case.losses, case.global(data))
        .ctx("backward from logits")?;
    let grads = vec![down(io, g.dz).ctx("download dZ")?];
    let total = g.losses.total.to_f64_lossy();
    Ok(Point {
        eval: objective(io, &pass, dw, total)?,
        grads,
    })
}

/// `sum(W * dW) + losses` w.r.t. `X` and `R`: every router configuration and every loss.
/// Runs on the backend; in `f32` with the coarse parameters of [`params`].
pub fn router_objective<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::fd::router_objective";
    if acquire(make, NAME).is_none() {
        return;
    }
    let p = params::<B::Elem>();
    let lim = Limits { n: 5, d: 4, e: 6 };
    let strategy = prop_oneof![
        2 => gen::case(lim, LossSet::All).boxed(),
        1 => gen::hard_case(LossSet::All).boxed(),
    ];
    run_prop(NAME, p.cases * 3 / 2, strategy, |case| {
        let data = case.data();
        let x = rounded::<B::Elem>(&data.x);
        let r = rounded::<B::Elem>(&data.r);
        let dw = rounded::<B::Elem>(&data.dw);
        reject_l1_kink(case.losses.simbal, case.cfg.layout, case.d, case.e, &r, p.h)?;
        let io = fresh(make);
        let mut router = Router::new(fresh(make), case.cfg).ctx("Router::new")?;
        let base = eval_tokens(&io, &mut router, &case, &data, (&x, &r, &dw))?;
        check_coords::<B::Elem>("X", p, &x, &base.grads[0], &base.eval, |xp| {
            Ok(eval_tokens(&io, &mut router, &case, &data, (xp, &r, &dw))?.eval)
        })?;
        check_coords::<B::Elem>("R", p, &r, &base.grads[1], &base.eval, |rp| {
            Ok(eval_tokens(&io, &mut router, &case, &data, (&x, rp, &dw))?.eval)
        })
    });
}

/// `sum(W * dW) + LBL + z-loss` w.r.t. the logits `Z` (`forward_logits` and its pass's backward).
pub fn logits_objective<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::fd::logits_objective";
    if acquire(make, NAME).is_none() {
        return;
    }
    let p = params::<B::Elem>();
    let strategy = prop_oneof![
        2 => gen::case(gen::SMALL, LossSet::NoSimBal).boxed(),
        1 => gen::hard_case(LossSet::NoSimBal).boxed(),
    ];
    run_prop(NAME, p.cases * 3 / 2, strategy, |case| {
        let data = case.data();
        let z = rounded::<B::Elem>(&data.z);
        let dw = rounded::<B::Elem>(&data.dw);
        let io = fresh(make);
        let mut router = Router::new(fresh(make), case.cfg).ctx("Router::new")?;
        let base = eval_logits(&io, &mut router, &case, &data, &z, &dw)?;
        check_coords::<B::Elem>("Z", p, &z, &base.grads[0], &base.eval, |zp| {
            Ok(eval_logits(&io, &mut router, &case, &data, zp, &dw)?.eval)
        })
    });
}
