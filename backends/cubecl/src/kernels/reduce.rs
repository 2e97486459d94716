//! Reductions: per-group column sums (column sums of `P`, per-sequence score sums), per-group
//! expert counts ([`super::dispatch::histogram`]), `sum_t lse(Z_t)^2`, the mean routing entropy
//! and the first non-finite value of a buffer. Float sums run in a fixed order (deterministic).

use cubecl::prelude::*;

use super::router_forward::{row_elem, row_layout, row_thread};
use super::util::{fill, fill_zero, fits_u32, is_nan_bits, is_non_finite_bits, tree_max, tree_sum};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::tokens::Groups;

use super::{check_len, check_len2, element_index, linear_cube, DevBuf, KernelError, Launch};
use crate::CubeclBackend;

/// Columns per cube and row lanes of [`group_column_sums`].
const COLS: usize = 32;
const ROW_LANES: usize = 8;

/// One cube per (group, block of 32 columns): 8 row lanes each sum a strided share of the
/// group's rows, then a fixed-order tree over the lanes.
#[cube(launch_unchecked)]
fn group_column_sums_kernel(a: &Array<f32>, out: &mut Array<f32>, cols: u32, group_len: u32) {
    let blocks = (cols as usize).div_ceil(COLS);
    let cube = linear_cube();
    let col = (cube % blocks) * COLS + UNIT_POS_X as usize;
    let b = cube / blocks;
    let rl = UNIT_POS_Y as usize;
    let cols = cols as usize;
    let glen = group_len as usize;
    let mut s = SharedMemory::<f32>::new(COLS * ROW_LANES);
    let mut acc = 0.0f32;
    if col < cols {
        let mut r = rl;
        while r < glen {
            acc += a[(b * glen + r) * cols + col];
            r += ROW_LANES;
        }
    }
    let slot = rl * COLS + UNIT_POS_X as usize;
    s[slot] = acc;
    sync_cube();
    let mut stride = comptime!(ROW_LANES / 2).runtime();
    while stride > 0 {
        if rl < stride {
            s[slot] = s[slot] + s[slot + stride * COLS];
        }
        sync_cube();
        stride /= 2;
    }
    if rl == 0 && col < cols {
        out[b * cols + col] = s[slot];
    }
}

/// Enqueues `out[b, c] = sum over the rows t of group b of a[t, c]` for the `n x cols` matrix
/// `a` in groups of `group_len` consecutive rows.
pub fn group_column_sums<R: Runtime>(
    client: &ComputeClient<R>,
    sums: &GroupSums<'_, CubeclBackend<R>>,
) -> Result<(), KernelError> {
    let (n, cols, a) = (sums.n, sums.cols, sums.a);
    let group_len = match sums.groups {
        Groups::Runs { len } if !sums.normalize => len,
        _ => {
            return Err(KernelError::Unsupported(
                "group sums by token ids or of normalised rows (the backend stages them)".into(),
            ))
        }
    };
    let out = &*sums.out;
    if group_len == 0 || n % group_len != 0 {
        return Err(KernelError::Unsupported(format!(
            "group length {group_len} does not divide {n}"
        )));
    }
    check_len2("matrix", n, cols, a.len)?;
    check_len2("group sums", n / group_len, cols, out.len)?;
    fits_u32("matrix", n * cols)?;
    if cols == 0 || n == 0 {
        return Ok(());
    }
    let blocks = cols.div_ceil(COLS);
    let launch = Launch::cubes_2d(blocks * (n / group_len), COLS, ROW_LANES)?;
    launch!(
        client,
        launch,
        group_column_sums_kernel(a.arg(), out.arg(), cols as u32, group_len as u32)
    );
    Ok(())
}

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
/// the entropy of the row normalised to sum 1 (0 for a row whose sum is not positive).
#[cube(launch_unchecked)]
fn row_stat_kernel(
    x: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    ninf: f32,
    #[comptime] e: usize,
    #[comptime] lanes: usize,
    #[comptime] rows: usize,
    #[comptime] entropy: bool,
) {
    let (lane, ty, row) = row_thread(rows);
    let valid = row < n as usize;
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
        if valid && lane == 0 {
            out[row] = h;
        }
    } else {
        let (mx, sum) = row_max_exp_sum(x, &mut rs, row * e, valid, rb, lane, ninf, e, lanes);
        let l = mx + f32::ln(sum);
        if valid && lane == 0 {
            out[row] = l * l;
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
    let launch = Launch::rows(n, lanes, rows)?;
    launch!(
        client,
        launch,
        row_stat_kernel(
            x.arg(),
            per_row.arg(),
            n as u32,
            f32::NEG_INFINITY,
            e,
            lanes,
            rows,
            entropy
        )
    );
    let factor = if entropy { 1.0 / n as f32 } else { 1.0 };
    Ok(Some((per_row, factor)))
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

/// Cubes of the partial passes of [`max_abs_partials`] and [`max_u32`].
const MAX_CUBES: usize = 512;

/// Per cube: `partial[2c] = max |x|` over non-NaN elements, `partial[2c + 1] = 1` if a NaN was
/// seen (else 0). Grid-stride over the buffer.
#[cube(launch_unchecked)]
fn max_abs_kernel(x: &Array<f32>, partial: &mut Array<f32>, len: u32) {
    let cube = linear_cube();
    let lane = UNIT_POS as usize;
    let cubes = CUBE_COUNT;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut mx = 0.0f32;
    let mut nan = 0.0f32;
    let mut i = cube * 256 + lane;
    while i < len as usize {
        let v = x[i];
        if is_nan_bits(v) {
            nan = 1.0;
        } else {
            let a = f32::abs(v);
            if a > mx {
                mx = a;
            }
        }
        i += cubes * 256;
    }
    let top = tree_max(&mut s, 0usize, lane, mx, 256usize);
    let any_nan = tree_max(&mut s, 0usize, lane, nan, 256usize);
    if lane == 0 {
        partial[2 * cube] = top;
        partial[2 * cube + 1] = any_nan;
    }
}

/// Largest absolute value of `x`; NaN when `x` holds a NaN; 0 when empty. Blocks for a small read.
pub fn max_abs<R: Runtime>(client: &ComputeClient<R>, x: &DevBuf<f32>) -> Result<f32, KernelError> {
    let len = fits_u32("buffer", x.len)?;
    if len == 0 {
        return Ok(0.0);
    }
    let cubes = x.len.div_ceil(256).min(MAX_CUBES);
    let partial = DevBuf::<f32>::empty(client, 2 * cubes);
    launch!(
        client,
        Launch::cubes(cubes)?,
        max_abs_kernel(x.arg(), partial.arg(), len)
    );
    let host = partial.read(client)?;
    let mut m = 0.0f32;
    for pair in host.chunks_exact(2) {
        if pair[1] != 0.0 {
            return Ok(f32::NAN);
        }
        m = m.max(pair[0]);
    }
    Ok(m)
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
