//! Reductions: per-group column sums (column sums of `P`, per-sequence score sums), per-group
//! expert counts ([`super::dispatch::histogram`]), `sum_t lse(Z_t)^2`, the mean routing entropy
//! and the first non-finite value of a buffer. Float sums run in a fixed order (deterministic).
//!
//! # Why not `cubek-reduce`
//! `cubek-reduce` 0.2.0 (on cubecl 0.10, in the lock file through burn) reduces one axis of a
//! tensor with a fixed instruction set (sum, mean, prod, max, min, max-abs, arg-max/min, top-k).
//! None of the kernels here is such a plain reduction, so they stay:
//! - [`max_abs`] must return NaN when the buffer holds one (as core's `validate::max_abs`; the
//!   router's checks of `Z` and `dZ` read it); cubek's `MaxAbs` combines with
//!   `select(acc > |x|, ..)` and `plane_max`, which drop or keep a NaN depending on where it
//!   sits, so it would need a second NaN pass anyway.
//! - the per-row statistics (`lse^2`, entropy) are one fused pass per row (max, exp-sum, log)
//!   with group masking; cubek would need the `E`-wide intermediate rows written out first.
//! - the column sums ([`group_column_sums`], `groups.rs`) go by token groups (runs or per-token
//!   ids, masked ids skipped) and optionally normalise each row first, in the same launch; only
//!   the whole-batch, unnormalised case is a plain axis-0 sum (of an `n x E` matrix), and
//!   giving it a second code path with a second summation order (cubek's depends on its
//!   routine, vector width and plane size) was not worth it; not measured against cubek.
//! - [`first_non_finite`], [`max_u32`] and [`max_abs_value`] are integer atomics, one launch
//!   each ([`max_abs_value`] on the bits of `|x|`, which keeps a NaN by construction).

// Comptime flags guard runtime tests: nesting keeps the comptime branch separate.
#![allow(clippy::collapsible_if)]

use cubecl::prelude::*;

use super::router_forward::{row_elem, row_layout, row_thread};
use super::util::{
    abs_bits, fill, fill_zero, fits_u32, is_non_finite_bits, reduce_all, tree_max, tree_max_u32,
    tree_sum, Whole,
};

use super::{check_len, check_len2, element_index, linear_cube, DevBuf, KernelError, Launch};

pub use super::groups::group_column_sums;

/// `(max, sum exp(x - max))` of the `e` elements of a row from `x[start]` (those of an invalid
/// row read as 0), shared by the row's `lanes` lanes through `rs[rb..rb + lanes]`. All threads
/// of the cube must call it.
#[cube]
pub fn row_max_exp_sum(
    x: &Array<f32>,
    rs: &mut SharedMemory<f32>,
    start: usize,
    valid: bool,
    rb: usize,
    lane: usize,
    ninf: f32,
    #[comptime] e: usize,
    #[comptime] lanes: usize,
) -> (f32, f32) {
    let mut top = ninf;
    let mut c = lane;
    while c < e {
        let v = row_elem(x, start + c, valid);
        if v > top {
            top = v;
        }
        c += lanes;
    }
    let mx = tree_max(rs, rb, lane, top, lanes);
    let mut sum = 0.0f32;
    c = lane;
    while c < e {
        sum += f32::exp(row_elem(x, start + c, valid) - mx);
        c += lanes;
    }
    sum = tree_sum(rs, rb, lane, sum, lanes);
    (mx, sum)
}

/// Per-row statistic, one row per group of `lanes` threads: `lse(x_t)^2` (`entropy = false`) or
/// the entropy of the row normalised to sum 1 (0 for a row whose sum is not positive). With
/// `masked`, a row whose group id `ids[t]` is at or above `count` writes 0, and `flags[t]` is
/// 1 for a valid row, 0 for a masked one.
#[cube(launch_unchecked)]
fn row_stat_kernel(
    x: &Array<f32>,
    ids: &Array<u32>,
    out: &mut Array<f32>,
    flags: &mut Array<f32>,
    n: u32,
    count: u32,
    ninf: f32,
    #[comptime] e: usize,
    #[comptime] lanes: usize,
    #[comptime] rows: usize,
    #[comptime] entropy: bool,
    #[comptime] masked: bool,
) {
    let (lane, ty, row) = row_thread(rows);
    let valid = row < n as usize;
    let mut keep = true;
    if masked {
        if valid {
            keep = ids[row] < count;
            if lane == 0 {
                let mut fl = 0.0f32;
                if keep {
                    fl = 1.0;
                }
                flags[row] = fl;
            }
        }
    }
    let mut rs = SharedMemory::<f32>::new(comptime!(lanes * rows));
    let rb = ty * lanes;
    if entropy {
        let mut sum = 0.0f32;
        let mut c = lane;
        while c < e {
            if valid {
                sum += x[row * e + c];
            }
            c += lanes;
        }
        sum = tree_sum(&mut rs, rb, lane, sum, lanes);
        let mut h = 0.0f32;
        if sum > 0.0 {
            c = lane;
            while c < e {
                if valid {
                    let q = x[row * e + c] / sum;
                    if q > 0.0 {
                        h -= q * f32::ln(q);
                    }
                }
                c += lanes;
            }
        }
        h = tree_sum(&mut rs, rb, lane, h, lanes);
        if !keep {
            h = 0.0;
        }
        if valid && lane == 0 {
            out[row] = h;
        }
    } else {
        let (mx, sum) = row_max_exp_sum(x, &mut rs, row * e, valid, rb, lane, ninf, e, lanes);
        let l = mx + f32::ln(sum);
        let mut l2 = l * l;
        if !keep {
            l2 = 0.0;
        }
        if valid && lane == 0 {
            out[row] = l2;
        }
    }
}

/// A per-row statistic of an `n x e` matrix, summed over the rows by
/// [`super::util::reduce_all`].
#[derive(Debug, Clone, Copy)]
pub enum RowStat<'a> {
    /// `sum_t lse(z_t)^2` over the logits `z`.
    LseSq {
        /// Rows.
        n: usize,
        /// Columns.
        e: usize,
        /// The logits.
        z: &'a DevBuf<f32>,
    },
    /// The mean per-token entropy (nats) of the scores `p`, each row normalised to sum 1.
    Entropy {
        /// Rows.
        n: usize,
        /// Columns.
        e: usize,
        /// The scores.
        p: &'a DevBuf<f32>,
    },
}

/// Enqueues [`row_stat_kernel`]: the statistic of each row and the factor of their sum; `None`
/// for an empty matrix (the statistic is 0).
pub(super) fn row_partials<R: Runtime>(
    client: &ComputeClient<R>,
    stat: RowStat<'_>,
) -> Result<Option<(DevBuf<f32>, f32)>, KernelError> {
    Ok(row_stat_launch(client, stat, None)?.map(|(per_row, factor, _)| (per_row, factor)))
}

/// Enqueues `out[0] = sum of the statistic over the valid rows` and `out[1] = valid rows` (as
/// f32), a row being valid when its group id in `ids` (`n`) is below `count` (core's `MASKED`
/// is not). Both are 0 for an empty matrix.
pub fn masked_row_sums<R: Runtime>(
    client: &ComputeClient<R>,
    stat: RowStat<'_>,
    ids: &DevBuf<u32>,
    count: usize,
    out: &DevBuf<f32>,
) -> Result<(), KernelError> {
    let n = match stat {
        RowStat::LseSq { n, .. } | RowStat::Entropy { n, .. } => n,
    };
    check_len("token group ids", n, ids.len)?;
    check_len("masked row sums", 2, out.len)?;
    fits_u32("groups", count)?;
    match row_stat_launch(client, stat, Some((ids, count)))? {
        Some((per_row, _, flags)) => {
            reduce_all(client, Whole::Sum(&per_row, 1.0), out, 0)?;
            reduce_all(client, Whole::Sum(&flags, 1.0), out, 1)
        }
        None => fill_zero(client, out),
    }
}

/// [`row_stat_kernel`] over `stat`'s rows (masked by `mask`'s ids and count when given): the
/// per-row values, their sum's factor and the valid flags (masked launches only).
#[allow(clippy::type_complexity)]
fn row_stat_launch<R: Runtime>(
    client: &ComputeClient<R>,
    stat: RowStat<'_>,
    mask: Option<(&DevBuf<u32>, usize)>,
) -> Result<Option<(DevBuf<f32>, f32, DevBuf<f32>)>, KernelError> {
    let (n, e, x, entropy) = match stat {
        RowStat::LseSq { n, e, z } => (n, e, z, false),
        RowStat::Entropy { n: 0, .. } => {
            return Err(KernelError::Unsupported("entropy of zero rows".into()))
        }
        RowStat::Entropy { n, e, p } => (n, e, p, true),
    };
    check_len2(if entropy { "scores" } else { "logits" }, n, e, x.len)?;
    fits_u32("rows", n * e)?;
    if n == 0 || e == 0 {
        return Ok(None);
    }
    let (lanes, rows) = row_layout(e);
    let per_row = DevBuf::<f32>::empty(client, n);
    let flags = DevBuf::<f32>::empty(client, if mask.is_some() { n } else { 1 });
    let (ids, count) = match mask {
        Some((ids, count)) => (ids.clone(), count),
        None => (DevBuf::empty(client, 1), 0),
    };
    let launch = Launch::rows(n, lanes, rows)?;
    launch!(
        client,
        launch,
        row_stat_kernel(
            x.arg(),
            ids.arg(),
            per_row.arg(),
            flags.arg(),
            n as u32,
            count as u32,
            f32::NEG_INFINITY,
            e,
            lanes,
            rows,
            entropy,
            mask.is_some(),
        )
    );
    let factor = if entropy { 1.0 / n as f32 } else { 1.0 };
    Ok(Some((per_row, factor, flags)))
}

#[cube(launch_unchecked)]
fn first_non_finite_kernel(x: &Array<f32>, first: &mut Array<Atomic<u32>>, len: u32) {
    let i = element_index();
    if i < len as usize && is_non_finite_bits(x[i]) {
        first[0].fetch_min(i as u32);
    }
}

/// Enqueues `first[0] =` the index of the first non-finite element of `x` (`u32::MAX` if none).
pub fn first_non_finite<R: Runtime>(
    client: &ComputeClient<R>,
    x: &DevBuf<f32>,
    first: &DevBuf<u32>,
) -> Result<(), KernelError> {
    check_len("first non-finite index", 1, first.len)?;
    fill(client, first, u32::MAX)?;
    if let Some((launch, len)) = Launch::per_element("checked buffer", x.len)? {
        launch!(
            client,
            launch,
            first_non_finite_kernel(x.arg(), first.arg(), len)
        );
    }
    Ok(())
}

/// Most cubes of the grid-stride passes of [`max_abs_value`].
const MAX_CUBES: usize = 512;

/// Each cube's maximum of `abs_bits(x)` (a grid-stride share, then a tree), folded into
/// `out[0]` with one atomic maximum per cube: exact and order-free, so one launch suffices.
#[cube(launch_unchecked)]
fn max_abs_kernel(x: &Array<f32>, out: &mut Array<Atomic<u32>>, len: u32) {
    let lane = UNIT_POS as usize;
    let cubes = CUBE_COUNT;
    let mut s = SharedMemory::<u32>::new(256usize);
    let mut mx = 0u32;
    let mut i = linear_cube() * 256 + lane;
    while i < len as usize {
        let b = abs_bits(x[i]);
        if b > mx {
            mx = b;
        }
        i += cubes * 256;
    }
    let top = tree_max_u32(&mut s, 0usize, lane, mx, 256usize);
    if lane == 0 {
        out[0].fetch_max(top);
    }
}

/// A zeroed one-element cell for an atomic maximum of [`abs_bits`], uploaded (a copy, not a
/// launch), so that the maximum itself is one launch.
pub fn abs_max_cell<R: Runtime>(client: &ComputeClient<R>) -> DevBuf<u32> {
    DevBuf::upload(client, &[0u32])
}

/// The largest absolute value of `x` as a one-element buffer (the value stays on the device):
/// NaN when `x` holds a NaN, 0 when empty. One launch (and a 4-byte upload); nothing waits.
///
/// # Errors
/// [`KernelError::Unsupported`] for more than `u32::MAX` elements.
pub fn max_abs_value<R: Runtime>(
    client: &ComputeClient<R>,
    x: &DevBuf<f32>,
) -> Result<DevBuf<f32>, KernelError> {
    let len = fits_u32("buffer", x.len)?;
    let out = abs_max_cell(client);
    if len > 0 {
        let cubes = x.len.div_ceil(256).clamp(1, MAX_CUBES);
        launch!(
            client,
            Launch::cubes(cubes)?,
            max_abs_kernel(x.arg(), out.arg(), len)
        );
    }
    Ok(out.bits_as_f32())
}

/// Largest absolute value of `x`; NaN when `x` holds a NaN; 0 when empty. Blocks for a 4-byte
/// read.
///
/// # Errors
/// As [`max_abs_value`], and [`KernelError::Device`] when the read fails.
pub fn max_abs<R: Runtime>(client: &ComputeClient<R>, x: &DevBuf<f32>) -> Result<f32, KernelError> {
    Ok(max_abs_value(client, x)?.read(client)?[0])
}

#[cube(launch_unchecked)]
fn max_u32_kernel(x: &Array<u32>, out: &mut Array<Atomic<u32>>, len: u32) {
    let i = element_index();
    if i < len as usize {
        out[0].fetch_max(x[i]);
    }
}

/// Largest element of an index buffer (0 when empty). Blocks for a 4-byte read.
pub fn max_u32<R: Runtime>(client: &ComputeClient<R>, x: &DevBuf<u32>) -> Result<u32, KernelError> {
    let Some((launch, len)) = Launch::per_element("index buffer", x.len)? else {
        return Ok(0);
    };
    let out = DevBuf::<u32>::empty(client, 1);
    fill_zero(client, &out)?;
    launch!(client, launch, max_u32_kernel(x.arg(), out.arg(), len));
    Ok(out.read(client)?[0])
}
