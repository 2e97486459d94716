//! Router backward row kernel: `dZ` from the gate gradient `dW`, the LBL's dense coefficient and
//! the z-loss, one token row per group of `lanes` threads (same layout as the forward kernel).
//!
//! Per row, as the reference: `dP` starts as the LBL coefficient row of the row's sequence (or
//! 0), plus `s dW_j` at `i_j` for plain gates (dropped slots' `dW` count as 0); the score backward
//! (softmax `P (dP - <dP, P>)`, sigmoid `dP P (1 - P)`); for renormalised gates the gate term
//! `(s dW_j - sum_l dW_l w_l) / (sum_l p_{i_l} + tiny)` through the score backward in closed form
//! with `q = p / (sum + tiny)`; then the z-loss term `z_coef lse(Z_t) softmax(Z_t)`.

use cubecl::prelude::*;

use super::reduce::row_max_exp_sum;
use super::router_forward::{row_elem, row_launch, row_thread, Gating, RowBufs, RowShape};
use super::util::{abs_bits, fits_u32, tree_max_u32, tree_sum};
use super::{check_len, check_len2, DevBuf, KernelError};

/// Compile-time shape and options of the backward row kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackShape {
    /// Layout and gating.
    pub row: RowShape,
    /// An LBL coefficient matrix is given.
    pub has_lbl: bool,
    /// The z-loss term is on (`z_coef != 0`).
    pub has_z: bool,
    /// Per-token group ids (`ids[t] >= count`, [`super::NONE`] included: a masked token, with
    /// no LBL row and no z-loss term); else runs of `group_len` tokens.
    pub ids: bool,
    /// The LBL coefficient row goes through the per-token normalisation `q = p / (sum p +
    /// 1e-20)`: `dL/dp = inv (c - <c, q>)`.
    pub normalize: bool,
    /// Each row's `lse(z_t)^2` (0 for a masked token) is written too: the z-loss's sum from
    /// the same pass over the logits, one reduction later.
    pub lse_rows: bool,
    /// `max |dZ|` is folded into a cell too (see [`BackOutputs::max_abs`]).
    pub max_abs: bool,
}

/// What a backward launch writes: `dZ`, and the per-step sums asked for.
#[derive(Debug, Clone, Copy)]
pub struct BackOutputs<'a> {
    /// The logit gradient, `n x E`.
    pub dz: &'a DevBuf<f32>,
    /// Each row's `lse(z_t)^2` (0 for a masked token), `n`: the z-loss's terms from the rows'
    /// own pass over the logits (a sum in a fixed order is one launch later: a deterministic
    /// sum across cubes needs a device-wide fence that cubecl 0.10 does not have).
    pub lse_rows: Option<&'a DevBuf<f32>>,
    /// A one-element cell, zero on entry ([`super::reduce::abs_max_cell`]), that ends as the
    /// bits of `max |dZ|` (NaN when `dZ` holds one): each cube folds its rows' maximum in with
    /// one atomic maximum on [`super::util::abs_bits`], which is exact and order-free, so it
    /// costs no launch of its own.
    pub max_abs: Option<&'a DevBuf<u32>>,
}

/// How the backward's token rows map to LBL coefficient rows (and which are masked).
#[derive(Debug, Clone, Copy)]
pub enum TokenGroups<'a> {
    /// Runs of `len` consecutive tokens (dividing `n`), all valid.
    Runs(usize),
    /// Group id per token (`n`); an id at or above `count` (as `MASKED`) is a masked token.
    Ids {
        /// The ids, `n`.
        ids: &'a DevBuf<u32>,
        /// Groups (coefficient rows).
        count: usize,
    },
}

/// The LBL term of a backward launch.
#[derive(Debug, Clone, Copy)]
pub struct BackLbl<'a> {
    /// `groups x E` coefficients (`dL/dq`).
    pub coef: &'a DevBuf<f32>,
    /// Through the per-token normalisation (see [`BackShape::normalize`]).
    pub normalize: bool,
}

/// Host-side options of a backward launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackOptions {
    /// Scores and gates, as in the forward.
    pub gating: Gating,
    /// `beta * 2 / N` of the z-loss (0 without it).
    pub z_coef: f32,
}

/// The gate gradient of assignment `at`, 0 when it was dropped.
#[cube]
fn kept_dw(dw: &Array<f32>, dropped: &Array<u32>, at: usize) -> f32 {
    let mut g = dw[at];
    if dropped[at] != 0 {
        g = 0.0;
    }
    g
}

/// Expert and kept gate gradient (see [`kept_dw`]) of assignment `at`.
#[cube]
fn assignment(idx: &Array<u32>, dw: &Array<f32>, dropped: &Array<u32>, at: usize) -> (usize, f32) {
    (idx[at] as usize, kept_dw(dw, dropped, at))
}

#[cube(launch_unchecked)]
fn router_backward_kernel(
    z: &Array<f32>,
    p: &Array<f32>,
    idx: &Array<u32>,
    gates: &Array<f32>,
    dropped: &Array<u32>,
    dw: &Array<f32>,
    coef: &Array<f32>,
    ids: &Array<u32>,
    dz: &mut Array<f32>,
    lse_rows: &mut Array<f32>,
    dz_max: &mut Array<Atomic<u32>>,
    n: u32,
    group_len: u32,
    count: u32,
    scale: f32,
    z_coef: f32,
    ninf: f32,
    #[comptime] cfg: BackShape,
) {
    let e = comptime!(cfg.row.e);
    let k = comptime!(cfg.row.k);
    let lanes = comptime!(cfg.row.lanes);
    let (lane, ty, row) = row_thread(cfg.row.rows);
    let valid = row < n as usize;

    let mut ds = SharedMemory::<f32>::new(comptime!(cfg.row.e * cfg.row.rows));
    let mut ps = SharedMemory::<f32>::new(comptime!(cfg.row.e * cfg.row.rows));
    let mut rs = SharedMemory::<f32>::new(comptime!(cfg.row.lanes * cfg.row.rows));
    let pb = ty * e;
    let rb = ty * lanes;

    // The row's coefficient row, and whether the token is masked (ids only).
    let mut grp = row / group_len as usize;
    let mut masked = false;
    if cfg.ids {
        let mut id = 0u32;
        if valid {
            id = ids[row];
        }
        masked = id >= count;
        grp = id as usize;
    }
    let mut c = lane;
    while c < e {
        let mut pv = 0.0f32;
        let mut dv = 0.0f32;
        if valid {
            pv = p[row * e + c];
            if cfg.has_lbl && !masked {
                dv = coef[grp * e + c];
            }
        }
        ps[pb + c] = pv;
        ds[pb + c] = dv;
        c += lanes;
    }
    sync_cube();

    // The LBL's per-token normalisation: `dL/dp = inv (c - <c, p inv>)`, inv = 1/(sum p + eps).
    if comptime!(cfg.has_lbl && cfg.normalize) {
        let mut sp = 0.0f32;
        c = lane;
        while c < e {
            sp += ps[pb + c];
            c += lanes;
        }
        sp = tree_sum(&mut rs, rb, lane, sp, lanes);
        let inv = 1.0 / (sp + 1e-20);
        let mut dot = 0.0f32;
        c = lane;
        while c < e {
            dot += ds[pb + c] * (ps[pb + c] * inv);
            c += lanes;
        }
        dot = tree_sum(&mut rs, rb, lane, dot, lanes);
        if !masked {
            c = lane;
            while c < e {
                ds[pb + c] = inv * (ds[pb + c] - dot);
                c += lanes;
            }
        }
        sync_cube();
    }

    // Plain gates: the gate term joins dP before the score backward.
    if !cfg.row.renorm {
        if valid && lane == 0 {
            let base = row * k;
            for j in 0..k {
                let (i, g) = assignment(idx, dw, dropped, base + j);
                if i < e {
                    ds[pb + i] = ds[pb + i] + scale * g;
                }
            }
        }
        sync_cube();
    }

    if cfg.row.softmax {
        let mut dot = 0.0f32;
        c = lane;
        while c < e {
            dot += ds[pb + c] * ps[pb + c];
            c += lanes;
        }
        dot = tree_sum(&mut rs, rb, lane, dot, lanes);
        c = lane;
        while c < e {
            ds[pb + c] = ps[pb + c] * (ds[pb + c] - dot);
            c += lanes;
        }
    } else {
        c = lane;
        while c < e {
            let pv = ps[pb + c];
            ds[pb + c] = ds[pb + c] * pv * (1.0 - pv);
            c += lanes;
        }
    }

    // Renormalised gates: the term `a_j / denom` (`a_j = s dW_j - sum_l dW_l w_l`) goes through
    // the score backward analytically with `q = p / denom <= 1`, so an underflowed `denom`
    // (saturated sigmoid rows) cannot make `inf * 0` (as the reference).
    if cfg.row.renorm {
        let mut ms = SharedMemory::<f32>::new(comptime!(cfg.row.rows));
        sync_cube();
        // The row's shared terms `inv = 1 / (sum_l p_{i_l} + tiny)` and `dot = sum_l dW_l w_l`,
        // by its lane 0 (the one that uses them).
        let base = row * k;
        let mut inv = 0.0f32;
        let mut dot = 0.0f32;
        if valid && lane == 0 {
            let mut sum = 0.0f32;
            for j in 0..k {
                let (i, g) = assignment(idx, dw, dropped, base + j);
                if i < e {
                    sum += ps[pb + i];
                }
                dot += g * gates[base + j];
            }
            inv = 1.0 / (sum + f32::MIN_POSITIVE);
        }
        if lane == 0 {
            let mut m = 0.0f32;
            if valid && cfg.row.softmax {
                for j in 0..k {
                    let (i, g) = assignment(idx, dw, dropped, base + j);
                    if i < e {
                        m += (scale * g - dot) * (ps[pb + i] * inv);
                    }
                }
            }
            ms[ty] = m;
        }
        sync_cube();
        if cfg.row.softmax {
            let m = ms[ty];
            c = lane;
            while c < e {
                ds[pb + c] = ds[pb + c] - ps[pb + c] * m;
                c += lanes;
            }
            sync_cube();
        }
        if valid && lane == 0 {
            for j in 0..k {
                let (i, g) = assignment(idx, dw, dropped, base + j);
                if i < e {
                    let pi = ps[pb + i];
                    let q = pi * inv;
                    if cfg.row.softmax {
                        ds[pb + i] = ds[pb + i] + (scale * g - dot) * q;
                    } else {
                        ds[pb + i] = ds[pb + i] + (scale * g - dot) * q * (1.0 - pi);
                    }
                }
            }
        }
        sync_cube();
    }

    if comptime!(cfg.has_z || cfg.lse_rows) {
        // lse and softmax of the logits (recomputed: P is not the softmax under sigmoid).
        let (mx, sum) = row_max_exp_sum(z, &mut rs, row * e, valid, rb, lane, ninf, e, lanes);
        let lse = mx + f32::ln(sum);
        // Comptime and runtime conditions stay apart (the kernel is expanded per config).
        let write_lse = valid && lane == 0;
        if comptime!(cfg.lse_rows) {
            let mut sq = lse * lse;
            if masked {
                sq = 0.0;
            }
            if write_lse {
                lse_rows[row] = sq;
            }
        }
        if comptime!(cfg.has_z) {
            let cz = z_coef * lse;
            c = lane;
            if masked {
                c = e;
            }
            while c < e {
                if cfg.row.softmax {
                    ds[pb + c] = ds[pb + c] + cz * ps[pb + c];
                } else {
                    let v = row_elem(z, row * e + c, valid);
                    ds[pb + c] = ds[pb + c] + cz * (f32::exp(v - mx) / sum);
                }
                c += lanes;
            }
        }
    }

    if valid {
        c = lane;
        while c < e {
            dz[row * e + c] = ds[pb + c];
            c += lanes;
        }
    }
    if comptime!(cfg.max_abs) {
        // The cube's `max |dZ|` (every lane reads back only what it wrote), one atomic.
        let mut mx = 0u32;
        if valid {
            c = lane;
            while c < e {
                let b = abs_bits(ds[pb + c]);
                if b > mx {
                    mx = b;
                }
                c += lanes;
            }
        }
        let threads = comptime!(cfg.row.lanes * cfg.row.rows);
        let mut ms = SharedMemory::<u32>::new(threads);
        let tid = ty * lanes + lane;
        let top = tree_max_u32(&mut ms, 0usize, tid, mx, threads);
        if tid == 0 {
            dz_max[0].fetch_max(top);
        }
    }
}

/// Enqueues the backward rows: `out.dz` (`n x E`) from the forward's `rows`, the dropped flags
/// and the gate gradient `dw` (`n x k`), with the tokens' groups as runs or per-token ids
/// (masked tokens: no LBL row, no z-loss term) and the LBL's `groups x E` coefficients,
/// optionally through the per-token score normalisation; the sums `out` asks for (each row's
/// `lse(z_t)^2`, `max |dZ|`) from the same launch.
#[allow(clippy::too_many_arguments)]
pub fn router_backward_rows<R: Runtime>(
    client: &ComputeClient<R>,
    o: &BackOptions,
    rows: RowBufs<'_>,
    dropped: &DevBuf<u32>,
    dw: &DevBuf<f32>,
    groups: TokenGroups<'_>,
    lbl: Option<BackLbl<'_>>,
    out: BackOutputs<'_>,
) -> Result<(), KernelError> {
    let BackOutputs {
        dz,
        lse_rows,
        max_abs,
    } = out;
    let (e, k) = (o.gating.e, o.gating.k);
    let n = rows.check(&o.gating)?;
    check_len2("dropped flags", n, k, dropped.len)?;
    check_len2("gate gradient", n, k, dw.len)?;
    check_len2("logit gradient", n, e, dz.len)?;
    let (group_len, count, ids) = match groups {
        TokenGroups::Runs(len) => {
            if len == 0 || n % len != 0 {
                return Err(KernelError::Unsupported(format!(
                    "sequence length {len} does not divide {n}"
                )));
            }
            (len, n / len, None)
        }
        TokenGroups::Ids { ids, count } => {
            check_len("token group ids", n, ids.len)?;
            fits_u32("groups", count)?;
            (1, count, Some(ids))
        }
    };
    if let Some(l) = lbl {
        check_len2("LBL coefficients", count, e, l.coef.len)?;
    }
    if let Some(rows) = lse_rows {
        check_len("per-row lse^2", n, rows.len)?;
    }
    if let Some(cell) = max_abs {
        check_len("max |dZ| cell", 1, cell.len)?;
    }
    if n == 0 {
        return Ok(());
    }
    fits_u32("logits", n * e)?;
    let shape = BackShape {
        row: RowShape::new(&o.gating),
        has_lbl: lbl.is_some(),
        has_z: o.z_coef != 0.0,
        ids: ids.is_some(),
        normalize: lbl.is_some_and(|l| l.normalize),
        lse_rows: lse_rows.is_some(),
        max_abs: max_abs.is_some(),
    };
    let r = &shape.row;
    let launch = row_launch(client, n, r, 4 * r.rows * (2 * e + r.lanes))?;
    let coef = lbl.map_or_else(|| DevBuf::empty(client, 1), |l| l.coef.clone());
    let ids = ids.map_or_else(|| DevBuf::empty(client, 1), DevBuf::clone);
    let lse_rows = lse_rows.map_or_else(|| DevBuf::empty(client, 1), DevBuf::clone);
    let dz_max = max_abs.map_or_else(|| DevBuf::empty(client, 1), DevBuf::clone);
    launch!(
        client,
        launch,
        router_backward_kernel(
            rows.z.arg(),
            rows.p.arg(),
            rows.idx.arg(),
            rows.gates.arg(),
            dropped.arg(),
            dw.arg(),
            coef.arg(),
            ids.arg(),
            dz.arg(),
            lse_rows.arg(),
            dz_max.arg(),
            n as u32,
            group_len as u32,
            count as u32,
            o.gating.scale,
            o.z_coef,
            f32::NEG_INFINITY,
            shape,
        )
    );
    Ok(())
}
