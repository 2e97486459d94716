//! Token-group reductions: per-group column sums (runs of rows or per-token group ids, rows
//! optionally normalised to sum 1 first, in the same launch) and the per-group expert histogram by token ids.
//! A token whose id is at or above the group count ([`super::NONE`], core's `MASKED`) is skipped.
//! Float sums run in a fixed order (deterministic).

// Comptime flags guard runtime tests: nesting keeps the comptime branch separate.
#![allow(clippy::collapsible_if)]

use cubecl::prelude::*;
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::tokens::Groups;

use super::util::{fill_zero, fits_u32};
use super::{check_len, check_len2, element_index, linear_cube, DevBuf, KernelError, Launch};
use crate::CubeclBackend;

/// Columns per cube and row lanes of [`group_column_sums`].
const COLS: usize = 32;
const ROW_LANES: usize = 8;

/// `1 / (sum_c a[t, c] + 1e-20)` (the LBL's per-token normalisation, summed in column order as
/// the reference).
#[cube]
fn row_inv(a: &Array<f32>, t: usize, cols: usize) -> f32 {
    let mut s = 0.0f32;
    for c in 0..cols {
        s += a[t * cols + c];
    }
    1.0 / (s + 1e-20)
}

/// One cube per (group, block of 32 columns): 8 row lanes each sum a strided share of the
/// group's rows, then a fixed-order tree over the lanes. Runs: the rows `b * len..(b + 1) len`;
/// `by_ids`: every row `t` with `ids[t] == b` (of `n`). `normalize`: each row times its
/// [`row_inv`], fused: the rows go in tiles of 256, each thread first the inverse sum of one
/// row of the tile (into shared memory), then the same strided sums (the same order).
#[cube(launch_unchecked)]
fn group_column_sums_kernel(
    a: &Array<f32>,
    ids: &Array<u32>,
    out: &mut Array<f32>,
    cols: u32,
    group_len: u32,
    n: u32,
    #[comptime] by_ids: bool,
    #[comptime] normalize: bool,
) {
    let blocks = (cols as usize).div_ceil(COLS);
    let cube = linear_cube();
    let col = (cube % blocks) * COLS + UNIT_POS_X as usize;
    let b = cube / blocks;
    let rl = UNIT_POS_Y as usize;
    let cols = cols as usize;
    let glen = group_len as usize;
    let slot = rl * COLS + UNIT_POS_X as usize;
    let mut s = SharedMemory::<f32>::new(COLS * ROW_LANES);
    let mut acc = 0.0f32;
    if normalize {
        let tile = comptime!(COLS * ROW_LANES);
        let mut inv = SharedMemory::<f32>::new(COLS * ROW_LANES);
        let mut total = glen;
        let mut first = b * glen;
        if by_ids {
            total = n as usize;
            first = 0;
        }
        let mut base = 0;
        while base < total {
            let r = base + slot;
            let mut w = 0.0f32;
            if r < total {
                let mut keep = true;
                if by_ids {
                    keep = ids[r] as usize == b;
                }
                if keep {
                    w = row_inv(a, first + r, cols);
                }
            }
            inv[slot] = w;
            sync_cube();
            if col < cols {
                let mut j = rl;
                while j < tile {
                    let r = base + j;
                    if r < total {
                        let mut keep = true;
                        if by_ids {
                            keep = ids[r] as usize == b;
                        }
                        if keep {
                            acc += a[(first + r) * cols + col] * inv[j];
                        }
                    }
                    j += ROW_LANES;
                }
            }
            sync_cube();
            base += tile;
        }
    } else if col < cols {
        let mut r = rl;
        if by_ids {
            while r < n as usize {
                if ids[r] as usize == b {
                    acc += a[r * cols + col];
                }
                r += ROW_LANES;
            }
        } else {
            while r < glen {
                acc += a[(b * glen + r) * cols + col];
                r += ROW_LANES;
            }
        }
    }
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

/// Enqueues `out[b, c] = sum over the valid rows t of group b of a[t, c]` (times `1 / (sum_c
/// a[t, c] + 1e-20)` with `normalize`) for the `n x cols` matrix `a`, its groups as core's
/// [`Groups`] (runs of consecutive rows, or per-row ids with masked rows skipped).
pub fn group_column_sums<R: Runtime>(
    client: &ComputeClient<R>,
    sums: &GroupSums<'_, CubeclBackend<R>>,
) -> Result<(), KernelError> {
    let (n, cols, a) = (sums.n, sums.cols, sums.a);
    let out = &*sums.out;
    check_len2("matrix", n, cols, a.len)?;
    let (groups, group_len, ids) = match sums.groups {
        Groups::Runs { len } => {
            if len == 0 || n % len != 0 {
                return Err(KernelError::Unsupported(format!(
                    "group length {len} does not divide {n}"
                )));
            }
            (n / len, len, None)
        }
        Groups::Ids { ids, count } => {
            check_len("token group ids", n, ids.len)?;
            (count, 1, Some(ids))
        }
    };
    check_len2("group sums", groups, cols, out.len)?;
    fits_u32("matrix", n * cols)?;
    if cols == 0 || groups == 0 {
        return Ok(());
    }
    if n == 0 {
        return fill_zero(client, out);
    }
    let ids_buf = ids.map_or_else(|| DevBuf::empty(client, 1), DevBuf::clone);
    let blocks = cols.div_ceil(COLS);
    let launch = Launch::cubes_2d(blocks * groups, COLS, ROW_LANES)?;
    launch!(
        client,
        launch,
        group_column_sums_kernel(
            a.arg(),
            ids_buf.arg(),
            out.arg(),
            cols as u32,
            group_len as u32,
            n as u32,
            ids.is_some(),
            sums.normalize,
        )
    );
    Ok(())
}

/// `counts[ids[a / k] * e + idx[a]] += 1` for every (kept) assignment `a` of a valid token.
#[cube(launch_unchecked)]
fn histogram_ids_kernel(
    idx: &Array<u32>,
    dropped: &Array<u32>,
    ids: &Array<u32>,
    counts: &mut Array<Atomic<u32>>,
    nk: u32,
    e: u32,
    k: u32,
    count: u32,
    #[comptime] use_dropped: bool,
) {
    let a = element_index();
    if a < nk as usize {
        let i = idx[a];
        let g = ids[a / k as usize];
        let mut keep = i < e && g < count;
        if use_dropped {
            if dropped[a] != 0 {
                keep = false;
            }
        }
        if keep {
            let slot = g as usize * e as usize + i as usize;
            counts[slot].fetch_add(1u32);
        }
    }
}

/// Enqueues `out[b, e] = #{(kept) assignments of the valid tokens of group b routed to e}`
/// (`out`, `count x e`, zeroed here) for `k` assignments per token and group ids `ids` (`n`).
/// Indices `>= e` are skipped.
#[allow(clippy::too_many_arguments)]
pub fn histogram_by_ids<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    k: usize,
    ids: &DevBuf<u32>,
    count: usize,
    idx: &DevBuf<u32>,
    dropped: Option<&DevBuf<u32>>,
    out: &DevBuf<u32>,
) -> Result<(), KernelError> {
    let nk = idx.len;
    check_len2("indices", ids.len, k, nk)?;
    check_len2("counts", count, e, out.len)?;
    if let Some(d) = dropped {
        check_len("dropped flags", nk, d.len)?;
    }
    fill_zero(client, out)?;
    if k == 0 {
        return Ok(());
    }
    let Some((launch, nk32)) = Launch::per_element("indices", nk)? else {
        return Ok(());
    };
    fits_u32("counts", out.len)?;
    fits_u32("groups", count)?;
    let d = dropped.unwrap_or(idx);
    launch!(
        client,
        launch,
        histogram_ids_kernel(
            idx.arg(),
            d.arg(),
            ids.arg(),
            out.arg(),
            nk32,
            e as u32,
            k as u32,
            count as u32,
            dropped.is_some(),
        )
    );
    Ok(())
}
