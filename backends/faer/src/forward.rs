//! The router's forward kernel on faer: the routing rows (scores, top-k, gates) in blocks across
//! rayon and, for logits from tokens, the logits GEMM of each block of rows fused with its
//! routing, so the block's logits are routed while they are in cache.

use crate::reduce::{max_abs_lanes, max_nan};
use crate::route_generic::ForwardRows;
use crate::{gemm, Faer, FaerElem};
use rayon::prelude::*;
use simbal_core::config::RouterConfig;
use simbal_core::router::kernels::{Logits, Route, RouteSums};
use simbal_core::Gemm;

/// What the forward rows write: scores, indices, gates and, when asked, the plain top-k.
type Routed<'a, T> = (
    &'a mut [T],
    &'a mut [u32],
    &'a mut [T],
    Option<&'a mut [u32]>,
);

/// Least rows per task of the fused logits-and-routing forward.
const FUSED_MIN_ROWS: usize = 64;

impl<T: FaerElem> Faer<T> {
    /// [`simbal_core::Backend::route`] on arguments core checked.
    pub(crate) fn route_checked(&self, a: Route<'_, Self>) -> RouteSums<T> {
        let Route {
            cfg,
            n,
            logits,
            bias,
            z,
            p,
            idx,
            gates,
            plain,
            request,
        } = a;
        let want_max = request.max_abs_z;
        if let Logits::Tokens { gemm: g, x, r } = logits {
            if let Some(blocks) = self.fused_blocks(&g) {
                let out = (p, idx, gates, plain);
                let m = self.logits_and_route(blocks, cfg, &g, x, r, bias, z, out, want_max);
                return RouteSums {
                    max_abs_z: want_max.then_some(m),
                };
            }
            gemm::gemm(&g, self.threads(), x, r, z);
        }
        let max_abs_z = want_max.then(|| max_abs_lanes(z));
        let rows = ForwardRows {
            cfg,
            z,
            bias,
            p,
            idx,
            gates,
            plain,
        };
        self.route_rows(n, rows);
        RouteSums { max_abs_z }
    }

    /// Blocks of rows the logits GEMM `g` is fused with the routing in, or `None` for separate
    /// calls: nothing to split, a transposed X (no row blocks), or D = 0 (empty blocks of X
    /// cannot be chunked).
    fn fused_blocks(&self, g: &Gemm) -> Option<usize> {
        let blocks = self.threads().min(g.m / FUSED_MIN_ROWS);
        (blocks > 1 && !g.trans_a && g.k > 0).then_some(blocks)
    }

    /// Forward rows of `n` tokens, one block per thread.
    fn route_rows(&self, n: usize, x: ForwardRows<'_, T>) {
        let (cfg, bias) = (x.cfg, x.bias);
        let (e, k) = (cfg.experts, cfg.k);
        let Some(rows) = self.row_block(n, e) else {
            return T::route_rows(x);
        };
        let block = |z, p, idx, gates, plain| {
            T::route_rows(ForwardRows {
                cfg,
                z,
                bias,
                p,
                idx,
                gates,
                plain,
            })
        };
        let blocks = (
            x.z.par_chunks(rows * e),
            x.p.par_chunks_mut(rows * e),
            x.idx.par_chunks_mut(rows * k),
            x.gates.par_chunks_mut(rows * k),
        );
        match x.plain {
            None => blocks
                .into_par_iter()
                .for_each(|(z, p, i, w)| block(z, p, i, w, None)),
            Some(pl) => (
                blocks.0,
                blocks.1,
                blocks.2,
                blocks.3,
                pl.par_chunks_mut(rows * k),
            )
                .into_par_iter()
                .for_each(|(z, p, i, w, l)| block(z, p, i, w, Some(l))),
        }
    }

    /// `z = gemm(x, r)` and the forward rows into `(p, idx, gates)` in `blocks` tasks, each
    /// computing the logits of its rows and routing them while they are in cache; returns
    /// `max |z|` when `max_abs_z` (else 0).
    fn logits_and_route(
        &self,
        blocks: usize,
        cfg: &RouterConfig,
        g: &Gemm,
        x: &[T],
        r: &[T],
        bias: Option<&[T]>,
        z: &mut [T],
        (p, idx, gates, plain): Routed<'_, T>,
        max_abs_z: bool,
    ) -> T {
        let (n, e, k, kd) = (g.m, cfg.experts, cfg.k, g.k);
        let rows = n.div_ceil(blocks).div_ceil(gemm::ALIGN) * gemm::ALIGN;
        let block = |xb: &[T], zb: &mut [T], pb, ib, wb, lb| {
            let gb = Gemm {
                m: zb.len() / e,
                ..*g
            };
            gemm::gemm(&gb, 1, xb, r, zb);
            let m = if max_abs_z {
                max_abs_lanes(zb)
            } else {
                T::zero()
            };
            T::route_rows(ForwardRows {
                cfg,
                z: zb,
                bias,
                p: pb,
                idx: ib,
                gates: wb,
                plain: lb,
            });
            m
        };
        let blocks = (
            x.par_chunks(rows * kd),
            z.par_chunks_mut(rows * e),
            p.par_chunks_mut(rows * e),
            idx.par_chunks_mut(rows * k),
            gates.par_chunks_mut(rows * k),
        );
        match plain {
            None => blocks
                .into_par_iter()
                .map(|(xb, zb, pb, ib, wb)| block(xb, zb, pb, ib, wb, None))
                .reduce(T::zero, max_nan),
            Some(pl) => {
                let (xs, zs, ps, is, ws) = blocks;
                (xs, zs, ps, is, ws, pl.par_chunks_mut(rows * k))
                    .into_par_iter()
                    .map(|(xb, zb, pb, ib, wb, lb)| block(xb, zb, pb, ib, wb, Some(lb)))
                    .reduce(T::zero, max_nan)
            }
        }
    }
}
