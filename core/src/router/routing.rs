//! What a router's forward pass computed ([`Routing`]) and what its backward pass computed
//! ([`Gradients`], [`LogitGradients`]), borrowed from the router's reusable workspace.

use crate::error::Result;
use crate::memory::{idx_view, Memory};

/// Loss values of one backward pass (each 0 when not configured).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossValues<T> {
    /// SimBal (already multiplied by its `lambda`).
    pub simbal: T,
    /// Load-balancing loss (already multiplied by its `alpha`).
    pub lbl: T,
    /// Router z-loss (already multiplied by its `beta`).
    pub z_loss: T,
    /// Sum of the three: the auxiliary objective whose gradient was added.
    pub total: T,
}

/// Shape of one routing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Tokens `N`.
    pub n: usize,
    /// Model width `D` (0 when routing from logits).
    pub d: usize,
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
}

/// Accessors borrowing a routing's buffers as views: `name: field as View | IdxView;`.
macro_rules! buffer_views {
    ($($(#[$doc:meta])* $name:ident: $field:ident as $kind:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> &B::$kind {
                core::borrow::Borrow::borrow(&self.$field)
            }
        )*
    };
}

/// The routing of one forward pass: every buffer the forward wrote, with its shape. Returned
/// (borrowed) by [`crate::Router::forward`] and [`crate::Router::routing`].
pub struct Routing<B: Memory> {
    pub(crate) shape: Shape,
    pub(crate) z: B::Buf,
    pub(crate) p: B::Buf,
    pub(crate) gates: B::Buf,
    pub(crate) idx: B::IdxBuf,
    pub(crate) dropped: B::IdxBuf,
    pub(crate) counts: B::IdxBuf,
    pub(crate) order: B::IdxBuf,
    pub(crate) offsets: B::IdxBuf,
    /// The plain top-k of the scores (`N x k`), written when the selection differs from it.
    pub(crate) plain: B::IdxBuf,
    pub(crate) has_plain: bool,
}

impl<B: Memory> Routing<B> {
    /// Buffers for `shape`.
    pub(crate) fn new(b: &B, shape: Shape) -> Result<Self> {
        let Shape { n, e, k, .. } = shape;
        let ne = crate::shape::product("logits", n, e)?;
        let nk = crate::shape::product("indices", n, k)?;
        Ok(Self {
            shape,
            z: b.zeros(ne)?,
            p: b.zeros(ne)?,
            gates: b.zeros(nk)?,
            idx: b.idx_zeros(nk)?,
            dropped: b.idx_zeros(nk)?,
            counts: b.idx_zeros(e)?,
            order: b.idx_zeros(nk)?,
            offsets: b.idx_zeros(e.saturating_add(1))?,
            plain: b.idx_zeros(nk)?,
            has_plain: false,
        })
    }

    /// The shape routed (`d = 0` for routing from logits).
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// Tokens `N`.
    pub fn tokens(&self) -> usize {
        self.shape.n
    }
    buffer_views! {
        /// Expert indices (`N x k`, best first).
        indices: idx as IdxView;
        /// Gates (`N x k`; 0 for dropped assignments).
        gates: gates as View;
        /// Scores `P` (`N x E`).
        scores: p as View;
        /// Logits `Z` (`N x E`).
        logits: z as View;
        /// Dropped flags (`N x k`, 1 = dropped by the capacity limit).
        dropped: dropped as IdxView;
        /// Kept assignments per expert (`E`): the sizes of the dispatch plan's segments, masked
        /// tokens included (they are dispatched); [`crate::RoutingStats::counts`] counts the valid
        /// tokens only.
        counts: counts as IdxView;
        /// Dispatch plan: kept assignment ids `t * k + j` grouped by expert, in token order within
        /// each expert (the first `offsets[E]` entries of an `N x k` buffer).
        dispatch_order: order as IdxView;
        /// Dispatch plan: per-expert offsets into [`Routing::dispatch_order`] (`E + 1`).
        dispatch_offsets: offsets as IdxView;
    }
    /// The plain top-k of the scores alone (`N x k`: no bias, no groups, before capacity),
    /// which the LBL counts by default; the selection itself when it has neither bias nor
    /// groups.
    pub fn plain_indices(&self) -> &B::IdxView {
        if self.has_plain {
            idx_view::<B>(&self.plain)
        } else {
            idx_view::<B>(&self.idx)
        }
    }
    /// The plain top-k when it differs from the selection's buffer (`None`: it is
    /// [`Routing::indices`]).
    pub(crate) fn plain_if_apart(&self) -> Option<&B::IdxView> {
        self.has_plain.then(|| idx_view::<B>(&self.plain))
    }
}

/// What a backward pass from tokens returned: the loss values and the gradients, borrowed from
/// the router's workspace until the next call.
pub struct Gradients<'a, B: Memory> {
    /// The auxiliary losses' values (each 0 when not configured).
    pub losses: LossValues<B::Elem>,
    /// `dL/dZ` (`N x E`).
    pub dz: &'a B::View,
    /// `dL/dX` (`N x D`).
    pub dx: &'a B::View,
    /// `dL/dR` in the weight's layout, SimBal's gradient included.
    pub dr: &'a B::View,
}

/// What a backward pass from logits returned.
pub struct LogitGradients<'a, B: Memory> {
    /// The auxiliary losses' values (SimBal is 0: it needs the weight).
    pub losses: LossValues<B::Elem>,
    /// `dL/dZ` (`N x E`).
    pub dz: &'a B::View,
}
