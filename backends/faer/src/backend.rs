//! [`Backend`] for [`Faer`]: the kernels it makes faster than core's defaults. Core has checked
//! every argument (each kernel takes [`Checked`] arguments), so none restates a length check.
//! The defaults serve `dispatch`, `group_counts`, `lbl_coefficients`, the SimBal kernels and
//! `routing_entropy`: on host memory they run core's reference rows with no copy, which is what
//! faer would run too.

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
use simbal_core::zloss::LseSqSum;
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
            lbl: a.lbl.map(|l| (l.coef, l.group_len)),
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
            group_len,
            a,
            out,
        } = a.into_inner();
        // `cols > 0`: rows of no columns cannot be chunked (core's sum handles them).
        if n / group_len >= 2 && cols > 0 && self.row_block(n, cols).is_some() {
            // One task per group (a sequence); each sums its own rows.
            a.par_chunks(group_len * cols)
                .zip(out.par_chunks_mut(cols))
                .for_each(|(rows, o)| group_column_sums(cols, group_len, rows, o));
        } else {
            group_column_sums(cols, group_len, a, out);
        }
        Ok(())
    }

    fn lse_sq_sum(&self, a: Checked<LseSqSum<'_, Self>>) -> Result<T> {
        let LseSqSum { n, e, z, scores } = a.into_inner();
        Ok(match scores {
            // From the softmax: `lse = max z - ln max p`, no exponentials.
            Some((ScoreFn::Softmax, p)) => {
                self.row_partial_sums(n, e, |zb, pb| T::lse_sq_sum_softmax(e, zb, pb), z, p)
            }
            _ => self.row_partial_sums(n, e, |zb, _| T::lse_sq_sum(e, zb), z, z),
        })
    }

    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        let e = a.counts.len();
        if e == 0 || e > SUMS_MAX_E {
            return stats::routing_stats_staged(self, a);
        }
        let CollectStats {
            n,
            k,
            p,
            counts,
            out,
        } = a.into_inner();
        self.column_sums(n, e, p, &mut out.score_sums);
        stats::fill_counts(out, n, k, counts);
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
