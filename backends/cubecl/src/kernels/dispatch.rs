//! Capacity dropping and the dispatch plan, deterministic and equal to the reference.
//!
//! 1. counts: an integer histogram with atomics (order-free, so exact);
//! 2. plan: one cube per expert scans all assignments in order with a block prefix sum and writes
//!    its kept assignment ids at `offsets[e] + rank` (stable in token order); the cube computes
//!    its own offset from the counts and writes `offsets[e]` (the last cube also `offsets[E]`);
//! 3. capacity `C`: one cube per expert over its segment of the plan. `Position` drops segment
//!    entries from `C` on; `Probs` ranks each entry among the segment (larger gate first, then lower
//!    assignment id, NaN gates last) and drops ranks `>= C`. Dropped gates are zeroed, then counts
//!    and plan are rebuilt over the kept assignments (the tail of `order` past `offsets[E]` keeps
//!    the first plan, as in the reference).
//!
//! `Probs` ranking costs `O(c_e^2)` per expert (`c_e` its assignments), spread over 256 threads.

// Comptime flags guard runtime tests: nesting keeps the comptime branch separate.
#![allow(clippy::collapsible_if)]

use cubecl::prelude::*;

use super::util::{before, block_scan_u32, fill_zero, fits_u32, is_nan_bits};
use super::{
    check_len, check_len2, check_top_k, element_index, linear_cube, DevBuf, KernelError, Launch,
    NONE,
};

/// Assignments each plan thread handles per tile.
const CHUNK: usize = 8;

/// `counts[(a / per) * e + idx[a]] += 1` for every (kept) assignment `a`; with `clear`, also
/// `clear_flags[a] = 0` (the dispatch's dropped flags, zeroed in the same pass).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn histogram_kernel(
    idx: &Array<u32>,
    dropped: &Array<u32>,
    counts: &mut Array<Atomic<u32>>,
    clear_flags: &mut Array<u32>,
    nk: u32,
    e: u32,
    per: u32,
    #[comptime] use_dropped: bool,
    #[comptime] clear: bool,
) {
    let a = element_index();
    if a < nk as usize {
        if clear {
            clear_flags[a] = 0u32;
        }
        let i = idx[a];
        let mut keep = i < e;
        if use_dropped {
            if dropped[a] != 0 {
                keep = false;
            }
        }
        if keep {
            let slot = (a / per as usize) * e as usize + i as usize;
            counts[slot].fetch_add(1u32);
        }
    }
}

/// Whether assignment `a` (of `nk`) exists, goes to expert `x` and (`use_dropped`) was kept.
#[cube]
fn is_hit(
    idx: &Array<u32>,
    dropped: &Array<u32>,
    a: usize,
    nk: u32,
    x: u32,
    #[comptime] use_dropped: bool,
) -> bool {
    let mut hit = false;
    if a < nk as usize {
        hit = idx[a] == x;
        if use_dropped {
            if dropped[a] != 0 {
                hit = false;
            }
        }
    }
    hit
}

/// One cube per expert: offsets and the stable, expert-sorted assignment ids.
#[cube(launch_unchecked)]
fn plan_kernel(
    idx: &Array<u32>,
    dropped: &Array<u32>,
    counts: &Array<u32>,
    offsets: &mut Array<u32>,
    order: &mut Array<u32>,
    nk: u32,
    e: u32,
    #[comptime] use_dropped: bool,
) {
    let x = linear_cube();
    let lane = UNIT_POS as usize;
    let mut s = SharedMemory::<u32>::new(512usize);
    if x < e as usize {
        let mut part = 0u32;
        let mut i = lane;
        while i < x {
            part += counts[i];
            i += 256usize;
        }
        let (_, off) = block_scan_u32(&mut s, lane, part);
        if lane == 0 {
            offsets[x] = off;
            if x + 1 == e as usize {
                offsets[x + 1] = off + counts[x];
            }
        }
        let xu = x as u32;
        let mut run = off;
        let mut t0 = 0usize;
        while t0 < nk as usize {
            let base = t0 + lane * CHUNK;
            let mut cnt = 0u32;
            for q in 0..CHUNK {
                if is_hit(idx, dropped, base + q, nk, xu, use_dropped) {
                    cnt += 1;
                }
            }
            let (ex, total) = block_scan_u32(&mut s, lane, cnt);
            let mut pos = (run + ex) as usize;
            for q in 0..CHUNK {
                let a = base + q;
                if is_hit(idx, dropped, a, nk, xu, use_dropped) {
                    order[pos] = a as u32;
                    pos += 1;
                }
            }
            run += total;
            t0 += 256 * CHUNK;
        }
    }
}

/// One cube per expert: flags the assignments past capacity `cap` in its plan segment.
#[cube(launch_unchecked)]
fn drop_kernel(
    gates: &Array<f32>,
    offsets: &Array<u32>,
    order: &Array<u32>,
    dropped: &mut Array<u32>,
    e: u32,
    cap: u32,
    ninf: f32,
    #[comptime] by_probs: bool,
) {
    let x = linear_cube();
    let lane = UNIT_POS as usize;
    let mut tg = SharedMemory::<f32>::new(256usize);
    let mut ta = SharedMemory::<u32>::new(256usize);
    if x < e as usize {
        let start = offsets[x] as usize;
        let cnt = offsets[x + 1] as usize - start;
        let cap = cap as usize;
        if cnt > cap {
            if by_probs {
                let mut s0 = 0usize;
                while s0 < cnt {
                    let sidx = s0 + lane;
                    let mine = sidx < cnt;
                    let mut a = NONE.runtime();
                    let mut g = ninf;
                    if mine {
                        a = order[start + sidx];
                        g = gates[a as usize];
                        if is_nan_bits(g) {
                            g = ninf;
                        }
                    }
                    let mut rank = 0usize;
                    let mut t0 = 0usize;
                    while t0 < cnt {
                        let tidx = t0 + lane;
                        let mut oa = NONE.runtime();
                        let mut og = ninf;
                        if tidx < cnt {
                            oa = order[start + tidx];
                            og = gates[oa as usize];
                            if is_nan_bits(og) {
                                og = ninf;
                            }
                        }
                        ta[lane] = oa;
                        tg[lane] = og;
                        sync_cube();
                        for q in 0..256usize {
                            if before(tg[q], ta[q], g, a) {
                                rank += 1;
                            }
                        }
                        sync_cube();
                        t0 += 256usize;
                    }
                    if mine && rank >= cap {
                        dropped[a as usize] = 1;
                    }
                    s0 += 256usize;
                }
            } else {
                let mut sidx = cap + lane;
                while sidx < cnt {
                    let a = order[start + sidx] as usize;
                    dropped[a] = 1;
                    sidx += 256usize;
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
fn apply_drops_kernel(gates: &mut Array<f32>, dropped: &Array<u32>, nk: u32) {
    let a = element_index();
    if a < nk as usize && dropped[a] != 0 {
        gates[a] = 0.0;
    }
}

/// Enqueues `out[b, e] = #{kept assignments of group b routed to e}` (`out` zeroed here);
/// `per` assignments form a group. Indices `>= e` are skipped.
pub fn histogram<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    per: usize,
    idx: &DevBuf<u32>,
    dropped: Option<&DevBuf<u32>>,
    out: &DevBuf<u32>,
) -> Result<(), KernelError> {
    histogram_clearing(client, e, per, idx, dropped, out, None)
}

/// [`histogram`], zeroing `clear` (one flag per assignment) in the same launch.
fn histogram_clearing<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    per: usize,
    idx: &DevBuf<u32>,
    dropped: Option<&DevBuf<u32>>,
    out: &DevBuf<u32>,
    clear: Option<&DevBuf<u32>>,
) -> Result<(), KernelError> {
    let nk = idx.len;
    if per == 0 || nk % per != 0 {
        return Err(KernelError::Unsupported(format!(
            "group of {per} assignments does not divide {nk}"
        )));
    }
    check_len2("counts", nk / per, e, out.len)?;
    if let Some(d) = dropped {
        check_len("dropped flags", nk, d.len)?;
    }
    if let Some(f) = clear {
        check_len("flags to clear", nk, f.len)?;
    }
    fill_zero(client, out)?;
    let Some((launch, nk32)) = Launch::per_element("indices", nk)? else {
        return Ok(());
    };
    fits_u32("counts", out.len)?;
    let d = dropped.unwrap_or(idx);
    let flags = clear.cloned().unwrap_or_else(|| DevBuf::empty(client, 1));
    launch!(
        client,
        launch,
        histogram_kernel(
            idx.arg(),
            d.arg(),
            out.arg(),
            flags.arg(),
            nk32,
            e as u32,
            per as u32,
            dropped.is_some(),
            clear.is_some(),
        )
    );
    Ok(())
}

/// The buffers of a dispatch plan over `e` experts: kept counts, the expert-sorted order and
/// its offsets, from the indices.
struct Plan<'a> {
    e: usize,
    idx: &'a DevBuf<u32>,
    counts: &'a DevBuf<u32>,
    order: &'a DevBuf<u32>,
    offsets: &'a DevBuf<u32>,
}

impl Plan<'_> {
    /// Enqueues the counts ([`histogram`], one group of `per` assignments, zeroing `clear` on
    /// the way) and [`plan_kernel`] over the assignments kept by `dropped` (all without).
    fn build<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        per: usize,
        dropped: Option<&DevBuf<u32>>,
        clear: Option<&DevBuf<u32>>,
    ) -> Result<(), KernelError> {
        let (e, idx) = (self.e, self.idx);
        histogram_clearing(client, e, per, idx, dropped, self.counts, clear)?;
        let d = dropped.unwrap_or(idx);
        launch!(
            client,
            Launch::cubes(e)?,
            plan_kernel(
                idx.arg(),
                d.arg(),
                self.counts.arg(),
                self.offsets.arg(),
                self.order.arg(),
                idx.len as u32,
                e as u32,
                dropped.is_some(),
            )
        );
        Ok(())
    }
}

/// Capacity of the dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityLimit {
    /// Kept assignments per expert, `ceil(cf N k / E)`.
    pub per_expert: usize,
    /// Keep the largest gates (else the first in token order).
    pub by_probs: bool,
}

/// Enqueues capacity dropping and the dispatch plan for `n x k` assignments over `e` experts:
/// writes `dropped` (`n x k`), zeroes dropped `gates`, and writes `counts` (`E`, kept),
/// `order` (`n x k`, kept ids `t * k + j` grouped by expert in token order first) and
/// `offsets` (`E + 1`).
#[allow(clippy::too_many_arguments)]
pub fn dispatch<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    k: usize,
    n: usize,
    capacity: Option<CapacityLimit>,
    idx: &DevBuf<u32>,
    gates: &DevBuf<f32>,
    dropped: &DevBuf<u32>,
    counts: &DevBuf<u32>,
    order: &DevBuf<u32>,
    offsets: &DevBuf<u32>,
) -> Result<(), KernelError> {
    check_top_k(e, k)?;
    let nk = n.saturating_mul(k);
    check_len("indices", nk, idx.len)?;
    check_len("gates", nk, gates.len)?;
    check_len("dropped flags", nk, dropped.len)?;
    check_len("counts", e, counts.len)?;
    check_len("dispatch order", nk, order.len)?;
    check_len("dispatch offsets", e.saturating_add(1), offsets.len)?;
    fits_u32("indices", nk)?;
    fits_u32("offsets", e + 1)?;
    let plan = Plan {
        e,
        idx,
        counts,
        order,
        offsets,
    };
    // The dropped flags start at zero, cleared by the first count's pass (no launch of their
    // own); with no assignment there is nothing to clear.
    plan.build(client, nk.max(1), None, Some(dropped))?;
    let Some(cap) = capacity else {
        return Ok(());
    };
    if cap.per_expert >= nk {
        return Ok(());
    }
    launch!(
        client,
        Launch::cubes(e)?,
        drop_kernel(
            gates.arg(),
            offsets.arg(),
            order.arg(),
            dropped.arg(),
            e as u32,
            cap.per_expert as u32,
            f32::NEG_INFINITY,
            cap.by_probs,
        )
    );
    if let Some((launch, nk32)) = Launch::per_element("indices", nk)? {
        launch!(
            client,
            launch,
            apply_drops_kernel(gates.arg(), dropped.arg(), nk32)
        );
    }
    plan.build(client, nk, Some(dropped), None)
}
