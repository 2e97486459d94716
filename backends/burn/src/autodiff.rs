//! [`SimbalBackend`] for [`Autodiff`]: the router forward as one node of burn's graph whose
//! backward is simbal's analytic gradient (burn's custom-backward pattern), so `loss.backward()`
//! gives `X` and `R` their gradients from the gates' upstream gradient and from each auxiliary
//! loss tensor that reached the objective, with no burn-side autodiff of the routing math.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use simbal_core::{LossConfig, Result, RoutingStats};

use crate::backend::{IdxBufOf, SimbalBackend, ViewOf};
use crate::route::{
    backward_with_engine, nan_like, BackwardState, RouteInputs, RouteOutputs, SharedRouter,
};

/// The graph node of one router forward: parents `X` and `R`, output the packed gates and loss
/// values.
#[derive(Debug)]
struct RouterNode;

impl<B: SimbalBackend> Backward<B, 2> for RouterNode {
    type State = BackwardState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_r] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let st = ops.state;
        // burn's backward returns nothing: a failure is kept for `MoeRouter::take_error` and
        // shows as NaN gradients rather than as missing ones.
        let (dx, dr) = backward_with_engine::<B>(&st, grad).unwrap_or_else(|e| {
            st.router.record(e);
            (nan_like::<B>(&st.inputs.x), nan_like::<B>(&st.inputs.r))
        });
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_r {
            grads.register::<B>(node.id, dr);
        }
    }
}

impl<B: SimbalBackend, C: CheckpointStrategy> SimbalBackend for Autodiff<B, C> {
    type Engine = B::Engine;
    type Lent<'a> = B::Lent<'a>;

    fn engine(device: &Self::Device) -> Result<Self::Engine> {
        B::engine(device)
    }

    fn lend<'a>(engine: &Self::Engine, t: &'a FloatTensor<Self>) -> Result<Self::Lent<'a>> {
        B::lend(engine, &t.primitive)
    }

    fn float_out(
        engine: &Self::Engine,
        v: &ViewOf<Self>,
        shape: &[usize],
        device: &Self::Device,
    ) -> Result<FloatTensor<Self>> {
        Ok(FloatTensor::<Self>::new(B::float_out(
            engine, v, shape, device,
        )?))
    }

    fn int_out(
        engine: &Self::Engine,
        v: &<Self::Engine as simbal_core::Memory>::IdxView,
        shape: &[usize],
        device: &Self::Device,
    ) -> Result<IntTensor<Self>> {
        B::int_out(engine, v, shape, device)
    }

    fn mask_in(engine: &Self::Engine, mask: BoolTensor<Self>) -> Result<IdxBufOf<Self>> {
        B::mask_in(engine, mask)
    }

    fn idx_in(engine: &Self::Engine, t: IntTensor<Self>) -> Result<IdxBufOf<Self>> {
        B::idx_in(engine, t)
    }

    fn simbal_route(
        router: &SharedRouter<Self::Engine>,
        inputs: RouteInputs<Self>,
        losses: &LossConfig,
        global: Option<Arc<RoutingStats>>,
        _: bool,
    ) -> Result<RouteOutputs<Self>> {
        let nodes = [inputs.x.node.clone(), inputs.r.node.clone()];
        let inner = RouteInputs::<B> {
            x: inputs.x.primitive,
            r: inputs.r.primitive,
            bias: inputs.bias.map(|b| b.primitive),
            mask: inputs.mask,
            offsets: inputs.offsets,
        };
        // Compute-bound: the state keeps the inputs, the forward is never re-run by burn's
        // checkpointing (a backward re-routes by itself when the router moved on). SimBal's
        // gradient is computed only when a backward can follow.
        Ok(
            match RouterNode.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = B::simbal_route(router, inner.clone(), losses, global.clone(), true)?;
                    let (generation, nk) = (out.generation, out.shape.n * out.shape.k);
                    lift(out, |packed, simbal_grad| {
                        let state = BackwardState {
                            router: router.clone(),
                            inputs: inner,
                            losses: *losses,
                            global,
                            generation,
                            nk,
                            simbal_grad,
                        };
                        prep.finish(state, packed)
                    })
                }
                OpsKind::UnTracked(prep) => lift(
                    B::simbal_route(router, inner, losses, global, false)?,
                    |packed, _| prep.finish(packed),
                ),
            },
        )
    }
}

/// The inner backend's outputs as `Autodiff`'s: `node` makes the packed gates and loss values a
/// graph node (given SimBal's gradient for its state), the scores stay outside the graph.
fn lift<B: SimbalBackend, C: CheckpointStrategy>(
    out: RouteOutputs<B>,
    node: impl FnOnce(FloatTensor<B>, Option<FloatTensor<B>>) -> FloatTensor<Autodiff<B, C>>,
) -> RouteOutputs<Autodiff<B, C>> {
    RouteOutputs {
        packed: node(out.packed, out.simbal_grad),
        scores: FloatTensor::<Autodiff<B, C>>::new(out.scores),
        indices: out.indices,
        plain_indices: out.plain_indices,
        dropped: out.dropped,
        counts: out.counts,
        dispatch_order: out.dispatch_order,
        dispatch_offsets: out.dispatch_offsets,
        values: out.values,
        shape: out.shape,
        valid_tokens: out.valid_tokens,
        generation: out.generation,
        simbal_grad: None,
    }
}
