//! [`Backend`] for [`Faer`]: the kernels it makes faster than core's defaults. Core has checked
//! every argument (each kernel takes [`Checked`] arguments), so none restates a length check.
//! The defaults serve `dispatch`, `group_counts`, `lbl_coefficients`, the SimBal kernels,
//! `token_groups` and `routing_entropy` (any groups): on host memory they run core's reference
//! rows with no copy, which is what faer would run too. `routing_stats` with masked tokens also
//! takes core's staged default.

use crate::backward::BackwardRows;
use crate::blocks::{SCAN_MIN_PAR, SUMS_MAX_E};
use crate::reduce::{first_non_finite, max_abs_lanes};
use crate::{gemm, Faer, FaerElem};
use rayon::prelude::*;
use simbal_core::gemm::GemmArgs;
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::lbl::reference::group_column_sums;
use simbal_core::router::kernels::{BackwardSums, Route, RouteSums, RouterBackward};
use simbal_core::stats::{self, CollectStats};
use simbal_core::tokens::{Groups, HostGroups, MASKED};
use simbal_core::zloss::LseSqSum;
use simbal_core::Selection;
use simbal_core::{Backend, Checked, Result, ScoreFn};

impl<T: FaerElem> Backend for Faer<T> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        // `Gemm::lens` saturates, so sizes whose products overflow match no buffer: only an
        // empty C passes the check with them, and `gemm::gemm` returns on it before any product.
        let a = a.into_inner();
        gemm::gemm(&a.gemm, self.threads(), a.a, a.b, a.c);
        Ok(())
    }

    fn route(&self, a: Checked<Route<'_, Self>>) -> Result<RouteSums<T>> {
        if a.cfg.selection != Selection::TopK {
            // Sinkhorn balances over the whole batch: core's rows (faer's GEMM still).
            return simbal_core::backend::route_staged(self, a);
        }
        Ok(self.route_checked(a.into_inner()))
    }

    fn router_backward(&self, a: Checked<RouterBackward<'_, Self>>) -> Result<BackwardSums<T>> {
        let a = a.into_inner();
        let rows = BackwardRows {
            cfg: a.cfg,
            z: a.z,
            p: a.p,
            idx: a.idx,
            gates: a.gates,
            dropped: a.dropped,
            dw: a.dw,
            lbl: a.lbl.as_ref().map(|l| l.coef),
            normalize: a.lbl.as_ref().is_some_and(|l| l.normalize),
            group_len: match a.groups {
                Groups::Runs { len } => len.max(1),
                Groups::Ids { .. } => 1,
            },
            ids: match a.groups {
                Groups::Runs { .. } => None,
                Groups::Ids { ids, .. } => Some(ids),
            },
            r0: 0,
            z_coef: a.z_coef,
            lse_sq: a.request.lse_sq_sum,
        };
        let (lse, max) = self.backward_blocks(a.n, &rows, a.dz, a.request.max_abs_dz);
        Ok(BackwardSums {
            lse_sq_sum: a.request.lse_sq_sum.then_some(lse),
            max_abs_dz: a.request.max_abs_dz.then_some(max),
        })
    }

    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        let GroupSums {
            n,
            cols,
            groups,
            normalize,
            a,
            out,
        } = a.into_inner();
        match groups {
            Groups::Runs { len } => {
                let len = len.max(1);
                let runs = HostGroups::Runs { len };
                // `cols > 0`: rows of no columns cannot be chunked (core's sum handles them).
                if n / len >= 2 && cols > 0 && self.row_block(n, cols).is_some() {
                    // One task per group (a sequence); each sums its own rows.
                    a.par_chunks(len * cols)
                        .zip(out.par_chunks_mut(cols))
                        .for_each(|(rows, o)| group_column_sums(cols, runs, normalize, rows, o));
                } else {
                    group_column_sums(cols, runs, normalize, a, out);
                }
            }
            // Per-token ids (masks, sequence-major or packed layouts): core's reference sum on
            // the host slices, in one sequential pass.
            Groups::Ids { ids, count } => {
                group_column_sums(cols, HostGroups::Ids { ids, count }, normalize, a, out);
            }
        }
        Ok(())
    }

    fn lse_sq_sum(&self, a: Checked<LseSqSum<'_, Self>>) -> Result<T> {
        let LseSqSum {
            n,
            groups,
            e,
            z,
            scores,
        } = a.into_inner();
        Ok(match (groups, scores) {
            // From the softmax: `lse = max z - ln max p`, no exponentials.
            (Groups::Runs { .. }, Some((ScoreFn::Softmax, p))) => {
                self.row_partial_sums(n, e, |_, zb, pb| T::lse_sq_sum_softmax(e, zb, pb), z, p)
            }
            (Groups::Runs { .. }, _) => {
                self.row_partial_sums(n, e, |_, zb, _| T::lse_sq_sum(e, zb), z, z)
            }
            // Masked tokens: the same blocks, each row's `lse` from the logits, valid rows only.
            (Groups::Ids { ids, .. }, _) => self.row_partial_sums(
                n,
                e,
                |r0, zb, _| {
                    let mut s = T::zero();
                    T::lse_rows(e, zb, |r, l| {
                        if ids[r0 + r] != MASKED {
                            s += l * l;
                        }
                    });
                    s
                },
                z,
                z,
            ),
        })
    }

    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        let e = a.counts.len();
        if e == 0 || e > SUMS_MAX_E || matches!(a.groups, Groups::Ids { .. }) {
            // Masked tokens (or an `E` the stack sums do not hold): core's staged default, i.e.
            // `stats_of` on the host slices, no copy.
            return stats::routing_stats_staged(self, a);
        }
        let CollectStats {
            n,
            k,
            p,
            normalize,
            idx,
            counts,
            plain,
            out,
            ..
        } = a.into_inner();
        self.column_sums(n, e, normalize, p, &mut out.score_sums);
        // Every token is valid: the kept counts are the dispatch's, and the routed counts too
        // when nothing was dropped and the plain top-k is the selection.
        if !stats::fill_counts(out, n, k, counts) || plain.is_some() {
            out.routed_counts.fill(0);
            for &i in plain.unwrap_or(idx) {
                if let Some(c) = out.routed_counts.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        Ok(())
    }

    fn max_abs(&self, buf: &[T]) -> Result<T> {
        Ok(max_abs_lanes(buf))
    }

    fn check_finite(&self, what: &'static str, cols: usize, buf: &[T]) -> Result<()> {
        // A scan runs at memory speed: below SCAN_MIN_PAR elements a fork-join costs more
        // than it saves.
        let par = if buf.len() < SCAN_MIN_PAR {
            None
        } else {
            self.row_block(buf.len(), 1)
        };
        let bad = match par {
            None => first_non_finite(buf, 0),
            Some(chunk) => buf
                .par_chunks(chunk)
                .enumerate()
                .filter_map(|(ci, c)| first_non_finite(c, ci * chunk))
                .min(),
        };
        match bad {
            None => Ok(()),
            Some(at) => Err(simbal_core::shape::non_finite_at(what, cols, at)),
        }
    }
}
