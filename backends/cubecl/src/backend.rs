//! [`simbal_core::Backend`] for [`CubeclBackend`]: every kernel on the device for the default
//! conventions. Core has checked each kernel's arguments before the call ([`Checked`]), so
//! nothing here restates a length check; the launchers in [`crate::kernels`] keep their own,
//! being public.
//!
//! On the device as well (issue 11): token groups as per-token ids with masked tokens
//! (`Groups::Ids`) in the router backward (masked rows: no LBL row, no z-loss term), the group
//! column sums and counts, `sum lse^2` and the routing entropy (means over the valid rows); the
//! LBL's per-token score normalisation in the backward and the group sums.
//!
//! Still through core's host-staged defaults (correct, with a transfer each way): sqrt-softplus
//! scores (route and backward), LBL coefficients with per-group valid tokens
//! (`GroupTokens::PerGroup`), routing statistics over ids, normalised scores or a separate plain
//! top-k, and Sinkhorn selection (a whole-batch iteration). The plain top-k of a biased or
//! grouped selection runs on the device as a second launch of the row kernel without bias and
//! groups.

use cubecl::prelude::*;
use simbal_core::config::{DropPolicy, LblNormalization, RouterConfig, ScoreFn, SimBalNorm};
use simbal_core::gemm::GemmArgs;
use simbal_core::lbl::kernels::{
    self as lbl_staged, GroupCounts, GroupSums, GroupTokens, LblCoefficients,
};
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{
    self as router_staged, BackwardSums, Dispatch, Logits, Route, RouteSums, RouterBackward,
};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::stats::{self as stats_staged, fill_counts, CollectStats};
use simbal_core::tokens::Groups;
use simbal_core::zloss::LseSqSum;
use simbal_core::{Backend, Checked, Result, SimbalError};

use crate::kernels::reduce::RowStat;
use crate::kernels::util::Whole;
use crate::kernels::{
    dispatch, gemm, groups, lbl, logits_route, reduce, router_backward, router_forward, simbal,
    util, DevBuf,
};
use crate::{map_err, CubeclBackend};

/// How the row kernels score and gate for a router configuration.
/// Core's GEMM description in the kernels' f32 terms.
fn gemm_dims(g: &simbal_core::gemm::Gemm) -> gemm::GemmDims {
    gemm::GemmDims {
        m: g.m,
        n: g.n,
        k: g.k,
        trans_a: g.trans_a,
        trans_b: g.trans_b,
        alpha: g.alpha as f32,
        beta: g.beta as f32,
    }
}

fn gating(cfg: &RouterConfig) -> router_forward::Gating {
    router_forward::Gating {
        e: cfg.experts,
        k: cfg.k,
        softmax: cfg.score == ScoreFn::Softmax,
        renorm: cfg.renormalize,
        scale: cfg.scale as f32,
    }
}

impl<R: Runtime> Backend for CubeclBackend<R> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let GemmArgs { gemm: g, a, b, c } = a.into_inner();
        let dims = gemm_dims(&g);
        let c_ = &self.client;
        match &self.tuner {
            Some(t) => {
                let path = t.path(c_, &dims, a, b).map_err(map_err)?;
                gemm::gemm_with(c_, &dims, path, a, b, c)
            }
            None => gemm::gemm(c_, &dims, a, b, c),
        }
        .map_err(map_err)
    }

    /// The logits GEMM (for [`Logits::Tokens`]) and the forward row kernel, one fused launch
    /// where `E <= 8` ([`logits_route::fuses`]), then `max |Z|` when asked (queued behind the
    /// rows, so one wait covers both).
    fn route(&self, a: Checked<Route<'_, Self>>) -> Result<RouteSums<DevBuf<f32>>> {
        if a.cfg.selection != simbal_core::Selection::TopK {
            // Sinkhorn balances over the whole batch: core's host rows after the device GEMM.
            return simbal_core::backend::route_staged(self, a);
        }
        let mut a = a.into_inner();
        let mut fused = None;
        if let Logits::Tokens { gemm, x, r } = a.logits {
            let args = GemmArgs {
                gemm,
                a: x,
                b: r,
                c: &mut *a.z,
            }
            .check(self)?;
            let dims = gemm_dims(&gemm);
            if a.cfg.score != ScoreFn::SqrtSoftplus && logits_route::fuses(&dims) {
                // The logits and the rows in one launch (below).
                fused = Some(logits_route::TokenLogits {
                    x,
                    r,
                    d: gemm.k,
                    trans_b: gemm.trans_b,
                });
            } else {
                self.gemm(args)?;
            }
        }
        if a.cfg.score == ScoreFn::SqrtSoftplus {
            // No sqrt-softplus row kernel yet: the host rows (the logits stay as computed).
            router_staged::route_rows_staged(self, &mut a)?;
        } else {
            let o = router_forward::RouteOptions {
                gating: gating(a.cfg),
                groups: a.cfg.groups.map(|g| (g.groups, g.top_groups)),
            };
            let rows = router_forward::RowBufs {
                n: a.n,
                z: a.z,
                p: a.p,
                idx: a.idx,
                gates: a.gates,
            };
            // The plain top-k (when asked) in the same launch, from the same rows.
            let plain = a.plain.as_deref_mut();
            let c = &self.client;
            match fused {
                Some(logits) => {
                    logits_route::logits_route_rows(c, &o, logits, rows, a.bias, plain.as_deref())
                }
                None => router_forward::route_rows(c, &o, rows, a.bias, plain.as_deref()),
            }
            .map_err(map_err)?;
            if let Some(plain) = plain {
                plain.bound = u32::try_from(a.cfg.experts).ok();
            }
        }
        // Every index the rows write is below E: later index checks are free.
        a.idx.bound = u32::try_from(a.cfg.experts).ok();
        let max_abs_z = a.request.max_abs_z.then(|| self.max_abs(a.z)).transpose()?;
        Ok(RouteSums { max_abs_z })
    }

    fn dispatch(&self, a: Checked<Dispatch<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let (n, e, k) = (a.n, a.cfg.experts, a.cfg.k);
        let capacity = a.cfg.capacity.map(|c| dispatch::CapacityLimit {
            per_expert: c.per_expert(n, e, k),
            by_probs: c.policy == DropPolicy::Probs,
        });
        let (idx, gates, dropped) = (a.idx, a.gates, a.dropped);
        let (counts, order, offsets) = (a.counts, a.order, a.offsets);
        let c = &self.client;
        dispatch::dispatch(
            c, e, k, n, capacity, idx, gates, dropped, counts, order, offsets,
        )
        .map_err(map_err)?;
        // Every id the plan writes is an assignment, below n k.
        order.bound = u32::try_from(n * k).ok();
        Ok(())
    }

    /// The backward row kernel, then the sums the request asks for, left on the device.
    fn router_backward(
        &self,
        a: Checked<RouterBackward<'_, Self>>,
    ) -> Result<BackwardSums<DevBuf<f32>>> {
        let mut a = a.into_inner();
        let n = a.n;
        if a.cfg.score == ScoreFn::SqrtSoftplus {
            return self.router_backward_staged(&mut a);
        }
        let groups = match a.groups {
            Groups::Runs { len } => router_backward::TokenGroups::Runs(len),
            Groups::Ids { ids, count } => router_backward::TokenGroups::Ids { ids, count },
        };
        let lbl = a.lbl.as_ref().map(|l| router_backward::BackLbl {
            coef: l.coef,
            normalize: l.normalize,
        });
        // The z-loss's `lse^2` per row and `max |dZ|` from the rows' own pass (masked rows
        // 0), then one sum of the rows when the z-loss is asked for.
        let lse_rows =
            (a.request.lse_sq_sum && n > 0).then(|| DevBuf::<f32>::empty(&self.client, n));
        let max_abs = a
            .request
            .max_abs_dz
            .then(|| reduce::abs_max_cell(&self.client));
        router_backward::router_backward_rows(
            &self.client,
            &router_backward::BackOptions {
                gating: gating(a.cfg),
                z_coef: a.z_coef,
            },
            router_forward::RowBufs {
                n,
                z: a.z,
                p: a.p,
                idx: a.idx,
                gates: a.gates,
            },
            a.dropped,
            a.dw,
            groups,
            lbl,
            router_backward::BackOutputs {
                dz: a.dz,
                lse_rows: lse_rows.as_ref(),
                max_abs: max_abs.as_ref(),
            },
        )
        .map_err(map_err)?;
        let lse_sq_sum =
            match lse_rows {
                Some(rows) => Some(self.value_of(|out| {
                    util::reduce_all(&self.client, Whole::Sum(&rows, 1.0), out, 0)
                })?),
                None if a.request.lse_sq_sum => Some(simbal_core::Memory::value(self, 0.0)?),
                None => None,
            };
        Ok(BackwardSums {
            lse_sq_sum,
            max_abs_dz: max_abs.map(DevBuf::bits_as_f32),
        })
    }

    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        groups::group_column_sums(&self.client, &a).map_err(map_err)
    }

    fn group_counts(&self, a: Checked<GroupCounts<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let len = match a.groups {
            Groups::Runs { len } => len,
            Groups::Ids { ids, count } => {
                return groups::histogram_by_ids(
                    &self.client,
                    a.e,
                    a.k,
                    ids,
                    count,
                    a.idx,
                    a.dropped,
                    a.out,
                )
                .map_err(map_err)
            }
        };
        if a.k == 0 || a.n == 0 {
            // No assignments: the histogram's group of `group_len k` would be empty.
            return util::fill_zero(&self.client, a.out).map_err(map_err);
        }
        let per = len * a.k;
        dispatch::histogram(&self.client, a.e, per, a.idx, a.dropped, a.out).map_err(map_err)
    }

    fn lbl_coefficients(&self, a: Checked<LblCoefficients<'_, Self>>) -> Result<DevBuf<f32>> {
        let GroupTokens::Uniform(tokens) = a.tokens else {
            // Per-group valid tokens (a token mask): core's host rows.
            return simbal_core::Memory::value(self, lbl_staged::lbl_coefficients_staged(self, a)?);
        };
        let a = a.into_inner();
        let s = a.scales;
        // As `lbl::reference::lbl_value_and_coef`: the scale in f64, rounded once to f32.
        let mut ae = a.cfg.alpha * a.e as f64 * s.factor;
        if a.cfg.normalization == LblNormalization::HuggingFace {
            ae *= s.k as f64;
        }
        let t = tokens as f64;
        // No valid token (or no group): loss 0, zero coefficients, as the reference.
        let c_scale = if tokens == 0 || s.groups == 0 {
            0.0
        } else {
            ae / (s.k as f64 * t * t * s.groups as f64)
        };
        self.value_of(|out| {
            lbl::lbl_coefficients(
                &self.client,
                c_scale as f32,
                a.counts,
                a.sums,
                a.coef,
                out,
                0,
            )
        })
    }

    /// From the logits alone (one row pass: the scores are not needed).
    fn lse_sq_sum(&self, a: Checked<LseSqSum<'_, Self>>) -> Result<DevBuf<f32>> {
        let a = a.into_inner();
        let (n, e, z) = (a.n, a.e, a.z);
        if let Groups::Ids { ids, count } = a.groups {
            // `[sum, valid rows]`: the value is the first element.
            let sums = self.masked_row_sums_dev(RowStat::LseSq { n, e, z }, ids, count)?;
            return Ok(DevBuf::from_handle(sums.handle, 1));
        }
        self.value_of(|out| {
            util::reduce_all(
                &self.client,
                Whole::Rows(RowStat::LseSq { n, e, z }),
                out,
                0,
            )
        })
    }

    fn simbal_residual(&self, a: Checked<SimbalResidual<'_, Self>>) -> Result<DevBuf<f32>> {
        let a = a.into_inner();
        let norm = match a.cfg.norm {
            SimBalNorm::L1 => simbal::Norm::L1,
            SimBalNorm::FrobeniusSq => simbal::Norm::FrobeniusSq,
            SimBalNorm::ScaleFree => simbal::Norm::ScaleFree,
        };
        let lambda = a.cfg.lambda as f32;
        self.value_of(|out| {
            simbal::simbal_residual(&self.client, norm, lambda, a.e, a.gram, out, 0)
        })
    }

    fn normalize_columns(&self, a: Checked<NormalizeColumns<'_, Self>>) -> Result<()> {
        simbal::normalize_columns(&self.client, &a).map_err(map_err)
    }

    fn scale_free_project(&self, a: Checked<ScaleFreeProject<'_, Self>>) -> Result<()> {
        simbal::scale_free_project(&self.client, &a).map_err(map_err)
    }

    /// Column sums of the scores on the device (one group of `n` rows), then one `E`-long
    /// download each of the sums and the counts.
    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        if matches!(a.groups, Groups::Ids { .. }) || a.normalize || a.plain.is_some() {
            return stats_staged::routing_stats_staged(self, a);
        }
        let CollectStats {
            n,
            k,
            p,
            idx,
            counts,
            out,
            ..
        } = a.into_inner();
        let e = counts.len;
        let mut sums = vec![0.0f32; e];
        if n > 0 {
            let mut dev = DevBuf::<f32>::empty(&self.client, e);
            let (cols, a, out) = (e, p, &mut dev);
            let all_rows = GroupSums {
                n,
                cols,
                groups: Groups::whole(n),
                normalize: false,
                a,
                out,
            };
            reduce::group_column_sums(&self.client, &all_rows).map_err(map_err)?;
            sums = dev.read(&self.client).map_err(map_err)?;
        }
        let counts = counts.read(&self.client).map_err(map_err)?;
        for (s, &v) in out.score_sums.iter_mut().zip(&sums) {
            *s = f64::from(v);
        }
        if !fill_counts(out, n, k, &counts) {
            // Something was dropped: the routed counts are those of every assignment.
            out.routed_counts.iter_mut().for_each(|c| *c = 0);
            for i in idx.read(&self.client).map_err(map_err)? {
                if let Some(c) = out.routed_counts.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        Ok(())
    }

    fn routing_entropy(&self, a: Checked<Entropy<'_, Self>>) -> Result<f32> {
        let a = a.into_inner();
        let stat = RowStat::Entropy {
            n: a.n,
            e: a.e,
            p: a.p,
        };
        let h = if let Groups::Ids { ids, count } = a.groups {
            // The mean over the valid rows (0 when there are none), as the reference.
            let [total, valid] = self.masked_row_sums(stat, ids, count)?;
            if valid > 0.0 {
                total / valid
            } else {
                0.0
            }
        } else {
            let h =
                self.value_of(|out| util::reduce_all(&self.client, Whole::Rows(stat), out, 0))?;
            self.read_first(&h)?
        };
        if h.is_finite() {
            Ok(h)
        } else {
            Err(SimbalError::Overflow {
                what: "routing entropy",
            })
        }
    }

    fn max_abs(&self, buf: &DevBuf<f32>) -> Result<DevBuf<f32>> {
        reduce::max_abs_value(&self.client, buf).map_err(map_err)
    }

    fn check_finite(&self, what: &'static str, cols: usize, buf: &DevBuf<f32>) -> Result<()> {
        let first = DevBuf::<u32>::empty(&self.client, 1);
        reduce::first_non_finite(&self.client, buf, &first).map_err(map_err)?;
        let at = self.read_first(&first)?;
        if at == u32::MAX {
            return Ok(());
        }
        let (at, cols) = (at as usize, cols.max(1));
        Err(SimbalError::NonFinite {
            what,
            row: at / cols,
            col: at % cols,
        })
    }
}

impl<R: Runtime> CubeclBackend<R> {
    /// The router backward through core's host rows (the trait default, for what the device
    /// kernel does not cover yet), with the sums the request asks for.
    fn router_backward_staged(
        &self,
        a: &mut RouterBackward<'_, Self>,
    ) -> Result<BackwardSums<DevBuf<f32>>> {
        router_staged::router_backward_rows_staged(self, a)?;
        let lse_sq_sum = self.lse_of(a)?;
        self.backward_sums(a.request.max_abs_dz, a.dz, lse_sq_sum)
    }

    /// `sum lse^2` over the valid tokens of a backward's groups, when the request asks.
    fn lse_of(&self, a: &RouterBackward<'_, Self>) -> Result<Option<DevBuf<f32>>> {
        if !a.request.lse_sq_sum {
            return Ok(None);
        }
        let args = LseSqSum {
            n: a.n,
            groups: a.groups,
            e: a.cfg.experts,
            z: a.z,
            scores: None,
        };
        Ok(Some(self.lse_sq_sum(args.check(self)?)?))
    }

    /// `[sum of stat over the valid rows, valid rows]` of a masked row statistic
    /// ([`reduce::masked_row_sums`]), one two-element read.
    fn masked_row_sums(
        &self,
        stat: RowStat<'_>,
        ids: &DevBuf<u32>,
        count: usize,
    ) -> Result<[f32; 2]> {
        let v = self
            .masked_row_sums_dev(stat, ids, count)?
            .read(&self.client)
            .map_err(map_err)?;
        Ok([v[0], v[1]])
    }

    /// [`Self::masked_row_sums`] left on the device.
    fn masked_row_sums_dev(
        &self,
        stat: RowStat<'_>,
        ids: &DevBuf<u32>,
        count: usize,
    ) -> Result<DevBuf<f32>> {
        let out = DevBuf::<f32>::empty(&self.client, 2);
        reduce::masked_row_sums(&self.client, stat, ids, count, &out).map_err(map_err)?;
        Ok(out)
    }

    /// The sums of a router backward whose `dz` is written: `max |dZ|` when `max_abs_dz`
    /// (the request asks for it) and `sum lse^2` (when asked), on the device.
    fn backward_sums(
        &self,
        max_abs_dz: bool,
        dz: &DevBuf<f32>,
        lse_sq_sum: Option<DevBuf<f32>>,
    ) -> Result<BackwardSums<DevBuf<f32>>> {
        let max_abs_dz = max_abs_dz.then(|| self.max_abs(dz)).transpose()?;
        Ok(BackwardSums {
            lse_sq_sum,
            max_abs_dz,
        })
    }
}
