//! Router forward row kernel: scores, top-k selection (selection bias, group limit, ties to the
//! lower index) and gates, one token row per group of `lanes` threads, several rows per cube;
//! optionally (comptime `has_plain`) the plain top-k of the scores alone as well, a second
//! selection over the same shared row (no bias, no groups), so the LBL's routed assignments
//! cost no second pass over `N x E`.
//!
//! Per row: logits are staged in shared memory; softmax (max-subtracted) or sigmoid gives `P`;
//! selection keys are `P + b` (NaN keys rank as `-inf`); with a group limit each group's score is
//! the sum of its top `m` keys (summed in pick order, as the reference), and `top_groups` rounds of
//! arg-max admit groups; then `k` rounds of arg-max pick experts, each the best candidate strictly
//! after the previous pick in the total order "higher key, then lower index" ([`super::select`]).
//! This is the reference's scratch-free selection, so indices agree exactly for equal keys.

use cubecl::prelude::*;

use super::scores::score_row_shared;
use super::select::{keep_best, pick_top_k};
use super::util::{after, tree_argmax};
use super::util::{fits_u32, is_nan_bits};
use super::{check_len, check_len2, check_top_k, linear_cube, DevBuf, KernelError, Launch, NONE};

/// How the row kernels score and gate a router's tokens: what a forward and a backward launch
/// share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gating {
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Softmax scores (else sigmoid).
    pub softmax: bool,
    /// Renormalised gates.
    pub renorm: bool,
    /// Gate scale `s`.
    pub scale: f32,
}

/// Host-side options of a forward launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteOptions {
    /// Scores and gates.
    pub gating: Gating,
    /// `(groups, top_groups)` of the group limit.
    pub groups: Option<(usize, usize)>,
}

/// Compile-time layout and gating of a row kernel (forward and backward alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowShape {
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Threads per row (a power of two).
    pub lanes: usize,
    /// Rows per cube.
    pub rows: usize,
    /// Softmax scores (else sigmoid).
    pub softmax: bool,
    /// Renormalised gates.
    pub renorm: bool,
}

impl RowShape {
    /// The layout of [`row_layout`] for `g`'s experts, and `g`'s gating.
    pub fn new(g: &Gating) -> Self {
        let (lanes, rows) = row_layout(g.e);
        Self {
            e: g.e,
            k: g.k,
            lanes,
            rows,
            softmax: g.softmax,
            renorm: g.renorm,
        }
    }
}

/// Compile-time shape and options of the forward row kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteShape {
    /// Layout and gating.
    pub row: RowShape,
    /// A selection bias is given.
    pub has_bias: bool,
    /// Groups of the group limit, 0 without one.
    pub groups: usize,
    /// Groups admitted to the top-k.
    pub top_groups: usize,
    /// Top scores summed per group: `clamp(k / top_groups, 1, E / groups)`.
    pub group_pick: usize,
    /// The plain top-k (of the scores alone) is written too.
    pub has_plain: bool,
}

/// `(lane, row slot in the cube, row)` of a thread of a row kernel: `lanes` threads (x) per
/// row, `rows` rows (y) per cube.
#[cube]
pub fn row_thread(#[comptime] rows: usize) -> (usize, usize, usize) {
    let ty = UNIT_POS_Y as usize;
    (UNIT_POS_X as usize, ty, linear_cube() * rows + ty)
}

/// `x[at]` of a row kernel's row, 0 (and not read) for a row past the end (`!valid`).
#[cube]
pub fn row_elem(x: &Array<f32>, at: usize, valid: bool) -> f32 {
    let mut v = 0.0f32;
    if valid {
        v = x[at];
    }
    v
}

#[cube(launch_unchecked)]
fn route_rows_kernel(
    z: &Array<f32>,
    bias: &Array<f32>,
    p_out: &mut Array<f32>,
    idx_out: &mut Array<u32>,
    gates_out: &mut Array<f32>,
    plain_out: &mut Array<u32>,
    n: u32,
    scale: f32,
    ninf: f32,
    #[comptime] cfg: RouteShape,
) {
    let e = comptime!(cfg.row.e);
    let lanes = comptime!(cfg.row.lanes);
    let (lane, ty, row) = row_thread(cfg.row.rows);
    let valid = row < n as usize;
    let mut ps = SharedMemory::<f32>::new(comptime!(cfg.row.e * cfg.row.rows));
    let pb = ty * e;
    // Stage the logits.
    let mut c = lane;
    while c < e {
        ps[pb + c] = row_elem(z, row * e + c, valid);
        c += lanes;
    }
    route_staged_row(
        &mut ps, bias, p_out, idx_out, gates_out, plain_out, valid, scale, ninf, cfg,
    );
}

/// The forward of one row whose logits each lane has staged (its strided share) in
/// `ps[ty E .. ty E + E]`: scores (`n x E`), selection, gates and, with `cfg.has_plain`, the
/// plain top-k (`n x k` each) written out. All threads of the cube must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn route_staged_row(
    ps: &mut SharedMemory<f32>,
    bias: &Array<f32>,
    p_out: &mut Array<f32>,
    idx_out: &mut Array<u32>,
    gates_out: &mut Array<f32>,
    plain_out: &mut Array<u32>,
    valid: bool,
    scale: f32,
    ninf: f32,
    #[comptime] cfg: RouteShape,
) {
    let e = comptime!(cfg.row.e);
    let k = comptime!(cfg.row.k);
    let lanes = comptime!(cfg.row.lanes);
    let ng = comptime!(cfg.groups);
    let (lane, ty, row) = row_thread(cfg.row.rows);

    let mut ks = SharedMemory::<f32>::new(comptime!(cfg.row.e * cfg.row.rows));
    let mut rs = SharedMemory::<f32>::new(comptime!(cfg.row.lanes * cfg.row.rows));
    let mut ri = SharedMemory::<u32>::new(comptime!(cfg.row.lanes * cfg.row.rows));
    let mut chosen = SharedMemory::<u32>::new(comptime!(cfg.row.k * cfg.row.rows));
    let pb = ty * e;
    let rb = ty * lanes;

    let softmax = comptime!(cfg.row.softmax);
    score_row_shared(ps, &mut rs, pb, rb, lane, ninf, e, lanes, softmax);

    // Scores out, selection keys in.
    let mut c = lane;
    while c < e {
        let p = ps[pb + c];
        if valid {
            p_out[row * e + c] = p;
        }
        let mut s = p;
        if cfg.has_bias {
            s = p + bias[c];
        }
        if is_nan_bits(s) {
            s = ninf;
        }
        ks[pb + c] = s;
        c += lanes;
    }
    sync_cube();

    // Group limit: admitted groups.
    let mut adm = SharedMemory::<u32>::new(comptime!(if cfg.groups > 0 {
        cfg.groups * cfg.row.rows
    } else {
        1
    }));
    if comptime!(ng > 0) {
        let glen = comptime!(cfg.row.e / cfg.groups.max(1));
        let mut gs = SharedMemory::<f32>::new(comptime!(cfg.groups * cfg.row.rows));
        let gb = ty * ng;
        let mut g = lane;
        while g < ng {
            let start = g * glen;
            let mut total = 0.0f32;
            let mut prev_s = 0.0f32;
            let mut prev_i = NONE.runtime();
            for _ in 0..comptime!(cfg.group_pick) {
                let mut bs = ninf;
                let mut bi = NONE.runtime();
                for cc in start..start + glen {
                    let s = ks[pb + cc];
                    let ci = cc as u32;
                    let (ns, ni) = keep_best(after(prev_s, prev_i, s, ci), s, ci, bs, bi);
                    bs = ns;
                    bi = ni;
                }
                if bi != NONE {
                    total += bs;
                    prev_s = bs;
                    prev_i = bi;
                }
            }
            gs[gb + g] = total;
            adm[gb + g] = 0;
            g += lanes;
        }
        sync_cube();
        let mut prev_s = 0.0f32;
        let mut prev_i = NONE.runtime();
        for _ in 0..comptime!(cfg.top_groups) {
            let mut bs = ninf;
            let mut bi = NONE.runtime();
            let mut g = lane;
            while g < ng {
                let s = gs[gb + g];
                let gi = g as u32;
                let (ns, ni) = keep_best(after(prev_s, prev_i, s, gi), s, gi, bs, bi);
                bs = ns;
                bi = ni;
                g += lanes;
            }
            let (ws, wi) = tree_argmax(&mut rs, &mut ri, rb, lane, bs, bi, lanes);
            if wi != NONE {
                if lane == 0 {
                    adm[gb + wi as usize] = 1;
                }
                prev_s = ws;
                prev_i = wi;
            }
        }
        sync_cube();
    }

    // Top-k.
    let row_shape = cfg.row;
    pick_top_k(
        &ks,
        false,
        &adm,
        ng,
        &mut rs,
        &mut ri,
        &mut chosen,
        ninf,
        row_shape,
    );
    if comptime!(cfg.has_plain) {
        // The plain top-k of the scores alone (no bias, no groups), from the same row.
        let mut pc = SharedMemory::<u32>::new(comptime!(cfg.row.k * cfg.row.rows));
        pick_top_k(
            ps, true, &adm, 0usize, &mut rs, &mut ri, &mut pc, ninf, row_shape,
        );
        sync_cube();
        if valid {
            let mut j = lane;
            while j < k {
                plain_out[row * k + j] = pc[ty * k + j];
                j += lanes;
            }
        }
    }
    sync_cube();

    // Gates, lane j writes slot j.
    if valid {
        let mut sum = 0.0f32;
        if cfg.row.renorm {
            for j in 0..k {
                sum += ps[pb + chosen[ty * k + j] as usize];
            }
        }
        // `s * (p / denom)`: the ratio is at most 1, so an underflowed sum (saturated sigmoid
        // rows) gives zero gates, not `0 * inf`, for any scale (as the reference).
        let denom = sum + f32::MIN_POSITIVE;
        let mut j = lane;
        while j < k {
            let i = chosen[ty * k + j];
            let p = ps[pb + i as usize];
            idx_out[row * k + j] = i;
            if cfg.row.renorm {
                gates_out[row * k + j] = scale * (p / denom);
            } else {
                gates_out[row * k + j] = scale * p;
            }
            j += lanes;
        }
    }
}

/// Threads per row and rows per cube for `E` experts.
pub fn row_layout(e: usize) -> (usize, usize) {
    let lanes = e.next_power_of_two().clamp(8, 128);
    (lanes, (256 / lanes).max(1))
}

/// The buffers of `n` token rows that both row kernels take: logits and scores (`n x E`),
/// expert indices (best first) and gates (`n x k`).
#[derive(Debug, Clone, Copy)]
pub struct RowBufs<'a> {
    /// Tokens `n`.
    pub n: usize,
    /// Logits.
    pub z: &'a DevBuf<f32>,
    /// Scores.
    pub p: &'a DevBuf<f32>,
    /// Expert indices.
    pub idx: &'a DevBuf<u32>,
    /// Gates.
    pub gates: &'a DevBuf<f32>,
}

impl RowBufs<'_> {
    /// Checks `g`'s `k` of `E` and the lengths of the buffers; the number of rows.
    pub(super) fn check(&self, g: &Gating) -> Result<usize, KernelError> {
        let (n, e, k) = (self.n, g.e, g.k);
        check_top_k(e, k)?;
        check_len2("logits", n, e, self.z.len)?;
        check_len2("scores", n, e, self.p.len)?;
        check_len2("indices", n, k, self.idx.len)?;
        check_len2("gates", n, k, self.gates.len)?;
        Ok(n)
    }
}

/// The launch of a row kernel of shape `row` over `n` rows, refused when its shared memory
/// (`bytes`) exceeds the device's.
pub(super) fn row_launch<R: Runtime>(
    client: &ComputeClient<R>,
    n: usize,
    row: &RowShape,
    bytes: usize,
) -> Result<Launch, KernelError> {
    let max_shared = client.properties().hardware.max_shared_memory_size;
    if bytes > max_shared {
        return Err(KernelError::Unsupported(format!(
            "E = {} needs more shared memory than the device's {max_shared} bytes",
            row.e
        )));
    }
    Launch::rows(n, row.lanes, row.rows)
}

/// Shared memory (bytes) of the forward kernel.
pub(super) fn shared_bytes(s: &RouteShape) -> usize {
    let r = &s.row;
    let plain = if s.has_plain { r.k } else { 0 };
    4 * r.rows * (2 * r.e + 2 * r.lanes + r.k + plain + 2 * s.groups.max(1))
}

/// The checks of a forward launch (`k` of `E`, every buffer's length, the group limit) and its
/// compile-time shape on `row`'s layout; `None` for no rows (nothing to launch).
pub(super) fn route_shape(
    o: &RouteOptions,
    row: RowShape,
    rows: &RowBufs<'_>,
    bias: Option<&DevBuf<f32>>,
    plain: Option<&DevBuf<u32>>,
) -> Result<Option<RouteShape>, KernelError> {
    let (e, k) = (o.gating.e, o.gating.k);
    let n = rows.check(&o.gating)?;
    if let Some(b) = bias {
        check_len("selection bias", e, b.len)?;
    }
    if let Some(pl) = plain {
        check_len2("plain indices", n, k, pl.len)?;
    }
    if n == 0 {
        return Ok(None);
    }
    fits_u32("logits", n * e)?;
    let (groups, top_groups, group_pick) = match o.groups {
        Some((g, top)) if top < g => {
            if g == 0 || e % g != 0 || top == 0 {
                return Err(KernelError::Unsupported(format!(
                    "{g} groups, {top} admitted, E = {e}"
                )));
            }
            (g, top, (k / top).clamp(1, e / g))
        }
        _ => (0, 0, 0),
    };
    Ok(Some(RouteShape {
        row,
        has_bias: bias.is_some(),
        groups,
        top_groups,
        group_pick,
        has_plain: plain.is_some(),
    }))
}

/// Enqueues the forward rows: `p` (`n x E`), `idx` and `gates` (`n x k`) from logits `z`, with
/// the selection bias (`E`) if any; with `plain` (`n x k`), the plain top-k of `p` alone (no
/// bias, no group limit; best first, ties to the lower index) in the same launch.
pub fn route_rows<R: Runtime>(
    client: &ComputeClient<R>,
    o: &RouteOptions,
    rows: RowBufs<'_>,
    bias: Option<&DevBuf<f32>>,
    plain: Option<&DevBuf<u32>>,
) -> Result<(), KernelError> {
    let Some(shape) = route_shape(o, RowShape::new(&o.gating), &rows, bias, plain)? else {
        return Ok(());
    };
    let n = rows.n;
    let n32 = n as u32;
    let launch = row_launch(client, n, &shape.row, shared_bytes(&shape))?;
    let bias = bias.cloned().unwrap_or_else(|| DevBuf::empty(client, 1));
    let plain = plain.cloned().unwrap_or_else(|| DevBuf::empty(client, 1));
    launch!(
        client,
        launch,
        route_rows_kernel(
            rows.z.arg(),
            bias.arg(),
            rows.p.arg(),
            rows.idx.arg(),
            rows.gates.arg(),
            plain.arg(),
            n32,
            o.gating.scale,
            f32::NEG_INFINITY,
            shape,
        )
    );
    Ok(())
}
