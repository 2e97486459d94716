//! The logits GEMM and the forward routing rows in one launch, for routers whose `E` fits the
//! skinny GEMM (`E <= 8`, `D` and `N` at least 64: the products [`super::gemm::gemm_path`] sends
//! to the skinny kernel). Each row's `E` dot products over `D` are summed as the skinny kernel
//! sums them (32 lanes a row, strided shares of `D`, coalesced reads of `X`, a fixed-order tree
//! over the lanes), land in shared memory, are written out as `Z` (the backward and the caller
//! read it), and the row is routed from there ([`route_staged_row`]) without reading `Z` back.
//!
//! Where it pays: with `E <= 8` the skinny GEMM's cubes already hold whole rows, so routing them
//! in place saves a launch and a pass over `Z` for nothing. Wider routers go through cubek's
//! tiles, whose output tiles hold parts of rows: there the rows stay a launch of their own.

use cubecl::prelude::*;

use super::gemm::{sum_accumulators, GemmDims, SKINNY_MAX_N, SKINNY_MIN_DIM, SK_LANES, SK_ROWS};
use super::router_forward::{
    route_shape, route_staged_row, row_launch, row_thread, shared_bytes, RouteOptions, RouteShape,
    RowBufs, RowShape,
};
use super::util::fits_u32;
use super::{check_len2, DevBuf, KernelError};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn logits_route_rows_kernel(
    x: &Array<f32>,
    r: &Array<f32>,
    bias: &Array<f32>,
    z_out: &mut Array<f32>,
    p_out: &mut Array<f32>,
    idx_out: &mut Array<u32>,
    gates_out: &mut Array<f32>,
    plain_out: &mut Array<u32>,
    n: u32,
    d: u32,
    scale: f32,
    ninf: f32,
    #[comptime] cfg: RouteShape,
    #[comptime] trans_b: bool,
) {
    let e = comptime!(cfg.row.e);
    let lanes = comptime!(cfg.row.lanes);
    let (lane, ty, row) = row_thread(cfg.row.rows);
    let valid = row < n as usize;
    let d = d as usize;
    // The skinny GEMM's sums: lane `l` takes `l, l + 32, ...` of `D`, then the tree.
    let mut acc = Array::<f32>::new(e);
    #[unroll]
    for j in 0..e {
        acc[j] = 0.0;
    }
    if valid {
        let mut l = lane;
        while l < d {
            let xv = x[row * d + l];
            #[unroll]
            for j in 0..e {
                let rv = if trans_b { r[j * d + l] } else { r[l * e + j] };
                acc[j] += xv * rv;
            }
            l += lanes;
        }
    }
    let mut s = SharedMemory::<f32>::new(comptime!(cfg.row.lanes * cfg.row.rows * cfg.row.e));
    sum_accumulators(&acc, &mut s, (ty * lanes + lane) * e, lane, e, lanes, e);
    // Lane `c < E` holds logit `c`: staged (its strided share) and written out.
    let mut ps = SharedMemory::<f32>::new(comptime!(cfg.row.e * cfg.row.rows));
    if lane < e {
        let v = s[ty * lanes * e + lane];
        ps[ty * e + lane] = v;
        if valid {
            z_out[row * e + lane] = v;
        }
    }
    route_staged_row(
        &mut ps, bias, p_out, idx_out, gates_out, plain_out, valid, scale, ninf, cfg,
    );
}

/// The token operands of the logits `Z = X op(R)`: `X` (`n x d`, row-major) and the router
/// weight `R` (`d x E`, or `E x d` with `trans_b`).
#[derive(Debug, Clone, Copy)]
pub struct TokenLogits<'a> {
    /// Tokens `X`.
    pub x: &'a DevBuf<f32>,
    /// Router weight `R`.
    pub r: &'a DevBuf<f32>,
    /// Model dimension `d`.
    pub d: usize,
    /// `R` is stored `E x d`.
    pub trans_b: bool,
}

/// Whether [`logits_route_rows`] takes the logits product `g` (`Z = X op(R)`, `n x E`): the
/// skinny GEMM's shapes (`E <= 8`, `D >= 64`, `n >= 64`), `X` untransposed, `alpha = 1` and
/// `beta = 0`.
pub fn fuses(g: &GemmDims) -> bool {
    g.n <= SKINNY_MAX_N
        && g.n > 0
        && g.k >= SKINNY_MIN_DIM
        && g.m >= SKINNY_MIN_DIM
        && !g.trans_a
        && g.alpha == 1.0
        && g.beta == 0.0
}

/// Enqueues the logits `rows.z = X op(R)` and the forward rows of [`super::router_forward::route_rows`]
/// from them, in one launch.
///
/// # Errors
/// [`KernelError::Length`] for a buffer of the wrong length, [`KernelError::Unsupported`] for
/// `E` past [`SKINNY_MAX_N`] or sizes past `u32`, as `route_rows` for the rest.
pub fn logits_route_rows<R: Runtime>(
    client: &ComputeClient<R>,
    o: &RouteOptions,
    logits: TokenLogits<'_>,
    rows: RowBufs<'_>,
    bias: Option<&DevBuf<f32>>,
    plain: Option<&DevBuf<u32>>,
) -> Result<(), KernelError> {
    let (n, e, d) = (rows.n, o.gating.e, logits.d);
    if e > SKINNY_MAX_N {
        return Err(KernelError::Unsupported(format!(
            "the fused logits and rows take E <= {SKINNY_MAX_N}, not {e}"
        )));
    }
    check_len2("tokens X", n, d, logits.x.len)?;
    check_len2("router weight R", d, e, logits.r.len)?;
    fits_u32("tokens X", n * d)?;
    // The skinny GEMM's cube: 32 lanes a row, 8 rows.
    let row = RowShape {
        lanes: SK_LANES,
        rows: SK_ROWS,
        ..RowShape::new(&o.gating)
    };
    let Some(shape) = route_shape(o, row, &rows, bias, plain)? else {
        return Ok(());
    };
    let bytes = shared_bytes(&shape) + 4 * SK_LANES * SK_ROWS * e;
    let launch = row_launch(client, n, &shape.row, bytes)?;
    let bias = bias.cloned().unwrap_or_else(|| DevBuf::empty(client, 1));
    let plain = plain.cloned().unwrap_or_else(|| DevBuf::empty(client, 1));
    launch!(
        client,
        launch,
        logits_route_rows_kernel(
            logits.x.arg(),
            logits.r.arg(),
            bias.arg(),
            rows.z.arg(),
            rows.p.arg(),
            rows.idx.arg(),
            rows.gates.arg(),
            plain.arg(),
            n as u32,
            d as u32,
            o.gating.scale,
            f32::NEG_INFINITY,
            shape,
            logits.trans_b,
        )
    );
    Ok(())
}
