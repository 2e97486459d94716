//! The buffers of the router's kernels and their arguments, for the kernel, error and fuzz
//! checks alike (see [`crate::harness::kernel`]): one set of buffers of a [`Shape`] that every
//! kernel's arguments borrow, so one kernel's outputs are the next one's inputs.

use crate::harness::kernel::{Fill, R};
use crate::harness::util::opt_view;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::router::kernels::{
    BackwardRequest, Dispatch, LblCoef, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::tokens::Groups;
use simbal_core::{Backend, Gemm, RouterConfig, Scalar};

/// The shape of a [`Bufs`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Tokens.
    pub n: usize,
    /// Features.
    pub d: usize,
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Rows of the logits GEMM of `route` from tokens.
    pub rows: usize,
    /// Tokens per row of LBL coefficients (tokens in runs).
    pub group_len: usize,
    /// Tokens grouped by [`Bufs::ids`] (masked entries included) into this many groups instead.
    pub id_groups: Option<usize>,
    /// `route` writes the plain top-k into [`Bufs::plain`].
    pub has_plain: bool,
    /// The LBL coefficients go through the per-token score normalisation.
    pub normalize: bool,
}

impl Shape {
    /// `n` tokens under `cfg`; one feature, a GEMM of `n` rows, one token per LBL group.
    pub fn of(cfg: &RouterConfig, n: usize) -> Self {
        Self {
            n,
            d: 1,
            e: cfg.experts,
            k: cfg.k,
            rows: n,
            group_len: 1,
            id_groups: None,
            has_plain: false,
            normalize: false,
        }
    }
}

/// Buffers of `route`, `dispatch` and `router_backward`, lengths as noted for a [`Shape`].
pub(crate) struct Bufs<B: Backend> {
    /// The shape.
    pub shape: Shape,
    /// Tokens of the logits GEMM, `rows x D`.
    pub x: B::Buf,
    /// Router weight, `D x E`.
    pub r: B::Buf,
    /// Given logits, `n x E`.
    pub z: B::Buf,
    /// Selection bias, `E`.
    pub bias: Option<B::Buf>,
    /// Scores, `n x E`.
    pub p: B::Buf,
    /// Expert indices, `n x k`.
    pub idx: B::IdxBuf,
    /// Gates, `n x k`.
    pub gates: B::Buf,
    /// Logits the GEMM writes, `rows x E`.
    pub zt: B::Buf,
    /// Dropped flags, `n x k`.
    pub dropped: B::IdxBuf,
    /// Kept counts, `E`.
    pub counts: B::IdxBuf,
    /// Dispatch order, `n x k`.
    pub order: B::IdxBuf,
    /// Dispatch offsets, `E + 1`.
    pub offsets: B::IdxBuf,
    /// Gate gradient, `n x k`.
    pub dw: B::Buf,
    /// LBL coefficients, `(n / group_len) x E`.
    pub coef: B::Buf,
    /// Logit gradient, `n x E`.
    pub dz: B::Buf,
    /// The plain top-k, `n x k`.
    pub plain: B::IdxBuf,
    /// Per-token group ids, `n`.
    pub ids: B::IdxBuf,
}

impl<B: Backend> Bufs<B> {
    /// Every buffer of `shape` from `fill`, in the order of the fields.
    pub fn new(shape: Shape, fill: &dyn Fill<B>) -> R<Self> {
        let Shape { n, d, e, k, .. } = shape;
        let (nk, ne) = (n.checked_mul(k), n.checked_mul(e));
        Ok(Self {
            shape,
            x: fill.vals(shape.rows.checked_mul(d))?,
            r: fill.vals(d.checked_mul(e))?,
            z: fill.vals(ne)?,
            bias: Some(fill.vals(Some(e))?),
            p: fill.vals(ne)?,
            idx: fill.idx(nk, e)?,
            gates: fill.vals(nk)?,
            zt: fill.vals(shape.rows.checked_mul(e))?,
            dropped: fill.idx(nk, 2)?,
            counts: fill.idx(Some(e), 3)?,
            order: fill.idx(nk, 3)?,
            offsets: fill.idx(e.checked_add(1), 3)?,
            dw: fill.vals(nk)?,
            coef: fill.vals(
                shape
                    .id_groups
                    .unwrap_or(n / shape.group_len.max(1))
                    .checked_mul(e),
            )?,
            dz: fill.vals(ne)?,
            plain: fill.idx(nk, e)?,
            ids: fill.idx(Some(n), 2)?,
        })
    }

    /// `route` from the given logits `z`, or, with `gemm`, from the logits the GEMM of `x` and
    /// `r` writes into `zt` (`rows` tokens).
    pub fn route<'a>(
        &'a mut self,
        cfg: &'a RouterConfig,
        gemm: Option<Gemm>,
        request: RouteRequest,
    ) -> Route<'a, B> {
        let (n, logits, z) = match gemm {
            None => (self.shape.n, Logits::Given, &mut self.z),
            Some(gemm) => {
                let (x, r) = (view::<B>(&self.x), view::<B>(&self.r));
                (self.shape.rows, Logits::Tokens { gemm, x, r }, &mut self.zt)
            }
        };
        Route {
            cfg,
            n,
            logits,
            bias: opt_view::<B>(&self.bias),
            z: view_mut::<B>(z),
            p: view_mut::<B>(&mut self.p),
            idx: idx_view_mut::<B>(&mut self.idx),
            gates: view_mut::<B>(&mut self.gates),
            plain: self
                .shape
                .has_plain
                .then(|| idx_view_mut::<B>(&mut self.plain)),
            request,
        }
    }

    /// `dispatch` of the indices and gates.
    pub fn dispatch<'a>(&'a mut self, cfg: &'a RouterConfig) -> Dispatch<'a, B> {
        Dispatch {
            cfg,
            n: self.shape.n,
            idx: idx_view::<B>(&self.idx),
            gates: view_mut::<B>(&mut self.gates),
            dropped: idx_view_mut::<B>(&mut self.dropped),
            counts: idx_view_mut::<B>(&mut self.counts),
            order: idx_view_mut::<B>(&mut self.order),
            offsets: idx_view_mut::<B>(&mut self.offsets),
        }
    }

    /// `router_backward` of the given logits into `dz`, with the LBL coefficients (`lbl`) and
    /// the z-loss coefficient `z_coef`.
    pub fn backward<'a>(
        &'a mut self,
        cfg: &'a RouterConfig,
        lbl: bool,
        z_coef: f64,
        request: BackwardRequest,
    ) -> RouterBackward<'a, B> {
        RouterBackward {
            cfg,
            n: self.shape.n,
            z: view::<B>(&self.z),
            p: view::<B>(&self.p),
            idx: idx_view::<B>(&self.idx),
            gates: view::<B>(&self.gates),
            dropped: idx_view::<B>(&self.dropped),
            dw: view::<B>(&self.dw),
            groups: match self.shape.id_groups {
                Some(count) => Groups::Ids {
                    ids: idx_view::<B>(&self.ids),
                    count,
                },
                None => Groups::Runs {
                    len: self.shape.group_len,
                },
            },
            lbl: lbl.then(|| LblCoef {
                coef: view::<B>(&self.coef),
                normalize: self.shape.normalize,
            }),
            z_coef: B::Elem::of(z_coef),
            dz: view_mut::<B>(&mut self.dz),
            request,
        }
    }
}
