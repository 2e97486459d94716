//! Switch / GShard load-balancing loss (LBL) at micro-batch, sequence and global-batch level:
//! the reference math ([`mod@reference`]), the kernel family ([`kernels`]) and, here, how the router
//! computes the loss of one pass from them.

pub mod kernels;
pub mod reference;

use crate::backend::Backend;
use crate::config::{LblConfig, LblCounts, LblLevel, RouterConfig};
use crate::error::{Result, SimbalError};
use crate::memory::{idx_view, idx_view_mut, view, view_mut};
use crate::router::batch::LossGroups;
use crate::router::routing::Routing;
use crate::stats::RoutingStats;
use alloc::vec;
use alloc::vec::Vec;
use kernels::{GroupCounts, GroupSums, GroupTokens, LblCoefficients};
use reference::{lbl_value_and_coef, LblScales};

/// The LBL's buffers in a router workspace, sized for `groups` groups (resized on demand).
pub(crate) struct LblScratch<B: Backend> {
    groups: usize,
    e: usize,
    sums: B::Buf,
    counts: B::IdxBuf,
    pub(crate) coef: B::Buf,
    host_sums: Vec<B::Elem>,
    host_coef: Vec<B::Elem>,
    host_counts: Vec<u32>,
}

impl<B: Backend> LblScratch<B> {
    pub(crate) fn new(b: &B, e: usize) -> Result<Self> {
        let zero = <B::Elem as num_traits::Zero>::zero();
        Ok(Self {
            groups: 1,
            e,
            sums: b.zeros(e)?,
            counts: b.idx_zeros(e)?,
            coef: b.zeros(e)?,
            host_sums: vec![zero; e],
            host_coef: vec![zero; e],
            host_counts: vec![0; e],
        })
    }

    fn ensure_groups(&mut self, b: &B, groups: usize) -> Result<()> {
        if self.groups != groups {
            let len = crate::shape::product("LBL groups", groups, self.e)?;
            let zero = <B::Elem as num_traits::Zero>::zero();
            self.sums = b.zeros(len)?;
            self.counts = b.idx_zeros(len)?;
            self.coef = b.zeros(len)?;
            self.host_sums = vec![zero; len];
            self.host_coef = vec![zero; len];
            self.groups = groups;
        }
        Ok(())
    }
}

/// The LBL of one routed pass over the groups `lg` (the valid tokens of the pass, or of each
/// sequence): writes the gradient coefficients into `s.coef` and returns the loss value (on
/// the backend's side: nothing here waits for the device).
/// `global` carries the merged statistics of the global batch for [`LblLevel::GlobalBatch`].
pub(crate) fn lbl_for_pass<B: Backend>(
    b: &B,
    rc: &RouterConfig,
    lc: &LblConfig,
    routing: &Routing<B>,
    lg: &LossGroups<'_, B>,
    global: Option<&RoutingStats>,
    s: &mut LblScratch<B>,
) -> Result<B::Value> {
    let crate::router::routing::Shape { n, e, k, .. } = routing.shape;
    let groups = lg.groups.count(n);
    s.ensure_groups(b, groups)?;
    b.group_column_sums(
        GroupSums {
            n,
            cols: e,
            groups: lg.groups,
            normalize: lc.normalizes(rc.score),
            a: view::<B>(&routing.p),
            out: view_mut::<B>(&mut s.sums),
        }
        .check(b)?,
    )?;
    if lc.level == LblLevel::GlobalBatch {
        // The merged counts live on the host (they came through an all-reduce).
        let g = global.ok_or(SimbalError::MissingGlobalStats)?;
        let counts = g.lbl_counts(lc.counts);
        if counts.len() != e {
            return Err(SimbalError::StatsMismatch {
                expected: e,
                got: counts.len(),
            });
        }
        if g.tokens == 0 {
            return Err(SimbalError::MissingGlobalStats);
        }
        let scales = LblScales {
            k,
            groups: 1,
            factor: lc.shard_factor,
        };
        let fits = |c: u64| u32::try_from(c).is_ok();
        if counts.iter().all(|&c| fits(c)) && fits(g.tokens) {
            // The merged counts go to the backend (an upload, no wait) and the coefficients
            // come from the same kernel as the local ones: the score sums stay where they are.
            for (h, &c) in s.host_counts.iter_mut().zip(counts) {
                *h = c as u32;
            }
            b.idx_write(idx_view_mut::<B>(&mut s.counts), &s.host_counts)?;
            return b.lbl_coefficients(
                LblCoefficients {
                    cfg: lc,
                    e,
                    scales,
                    tokens: GroupTokens::Uniform(g.tokens as usize),
                    counts: idx_view::<B>(&s.counts),
                    sums: view::<B>(&s.sums),
                    coef: view_mut::<B>(&mut s.coef),
                }
                .check(b)?,
            );
        }
        // Counts past u32 (4e9 assignments in one step): exact in f64 on the host.
        b.download(view::<B>(&s.sums), &mut s.host_sums)?;
        let v = lbl_value_and_coef(
            lc,
            e,
            &scales,
            |_| g.tokens as f64,
            |be| counts[be] as f64,
            &s.host_sums,
            &mut s.host_coef,
        );
        b.write(view_mut::<B>(&mut s.coef), &s.host_coef)?;
        return b.value(v);
    }
    // Local counts: everything stays on the backend's side.
    let (idx, dropped) = match lc.counts {
        LblCounts::Routed => (routing.plain_indices(), None),
        LblCounts::Dispatched => (routing.indices(), Some(routing.dropped())),
    };
    b.group_counts(
        GroupCounts {
            n,
            k,
            e,
            groups: lg.groups,
            idx,
            dropped,
            out: idx_view_mut::<B>(&mut s.counts),
        }
        .check(b)?,
    )?;
    b.lbl_coefficients(
        LblCoefficients {
            cfg: lc,
            e,
            scales: LblScales {
                k,
                groups,
                factor: 1.0,
            },
            tokens: lg.tokens,
            counts: idx_view::<B>(&s.counts),
            sums: view::<B>(&s.sums),
            coef: view_mut::<B>(&mut s.coef),
        }
        .check(b)?,
    )
}
