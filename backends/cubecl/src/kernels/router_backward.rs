//! Router backward row kernel: `dZ` from the gate gradient `dW`, the LBL's dense coefficient and
//! the z-loss, one token row per group of `lanes` threads (same layout as the forward kernel).
//!
//! Per row, as the reference: `dP` starts as the LBL coefficient row of the row's sequence (or
//! 0), plus `s dW_j` at `i_j` for plain gates (dropped slots' `dW` count as 0); the score backward
//! (softmax `P (dP - <dP, P>)`, sigmoid `dP P (1 - P)`); for renormalised gates the gate term
//! `(s dW_j - sum_l dW_l w_l) / (sum_l p_{i_l} + tiny)` through the score backward in closed form
//! with `q = p / (sum + tiny)`; then the z-loss term `z_coef lse(Z_t) softmax(Z_t)`.

#![allow(unsafe_code)] // kernel launches: see the module docs of `kernels`

use cubecl::prelude::*;

use super::reduce::row_max_exp_sum;
use super::router_forward::{row_layout, row_thread};
use super::util::{fits_u32, tree_sum};
use super::{check_len2, grid, DevBuf, KernelError};

/// Compile-time shape and options of the backward row kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackShape {
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
    /// Gates were renormalised.
    pub renorm: bool,
    /// An LBL coefficient matrix is given.
    pub has_lbl: bool,
    /// The z-loss term is on (`z_coef != 0`).
    pub has_z: bool,
}

/// Host-side options of a backward launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackOptions {
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Softmax scores (else sigmoid).
    pub softmax: bool,
    /// Gates were renormalised.
    pub renorm: bool,
    /// Gate scale `s`.
    pub scale: f32,
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

/// The renormalised gates' shared terms of the row whose assignments start at `base`:
/// `1 / (sum_l p_{i_l} + tiny)` and `sum_l dW_l w_l`.
#[cube]
fn renorm_terms(
    idx: &Array<u32>,
    gates: &Array<f32>,
    dropped: &Array<u32>,
    dw: &Array<f32>,
    ps: &SharedMemory<f32>,
    base: usize,
    pb: usize,
    #[comptime] e: usize,
    #[comptime] k: usize,
) -> (f32, f32) {
    let mut sum = 0.0f32;
    let mut dot = 0.0f32;
    for j in 0..k {
        let i = idx[base + j] as usize;
        if i < e {
            sum += ps[pb + i];
        }
        dot += kept_dw(dw, dropped, base + j) * gates[base + j];
    }
    (1.0 / (sum + f32::MIN_POSITIVE), dot)
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
    dz: &mut Array<f32>,
    n: u32,
    group_len: u32,
    scale: f32,
    z_coef: f32,
    ninf: f32,
    #[comptime] cfg: BackShape,
) {
    let e = comptime!(cfg.e);
    let k = comptime!(cfg.k);
    let lanes = comptime!(cfg.lanes);
    let (lane, ty, row) = row_thread(cfg.rows);
    let valid = row < n as usize;

    let mut ds = SharedMemory::<f32>::new(comptime!(cfg.e * cfg.rows));
    let mut ps = SharedMemory::<f32>::new(comptime!(cfg.e * cfg.rows));
    let mut rs = SharedMemory::<f32>::new(comptime!(cfg.lanes * cfg.rows));
    let pb = ty * e;
    let rb = ty * lanes;

    let mut c = lane;
    while c < e {
        let mut pv = 0.0f32;
        let mut dv = 0.0f32;
        if valid {
            pv = p[row * e + c];
            if cfg.has_lbl {
                dv = coef[(row / group_len as usize) * e + c];
            }
        }
        ps[pb + c] = pv;
        ds[pb + c] = dv;
        c += lanes;
    }
    sync_cube();

    // Plain gates: the gate term joins dP before the score backward.
    if !cfg.renorm {
        if valid && lane == 0 {
            let base = row * k;
            for j in 0..k {
                let i = idx[base + j] as usize;
                let g = kept_dw(dw, dropped, base + j);
                if i < e {
                    ds[pb + i] = ds[pb + i] + scale * g;
                }
            }
        }
        sync_cube();
    }

    if cfg.softmax {
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
    if cfg.renorm {
        let mut ms = SharedMemory::<f32>::new(comptime!(cfg.rows));
        sync_cube();
        if lane == 0 {
            let mut m = 0.0f32;
            if valid && cfg.softmax {
                let base = row * k;
                let (inv, dot) = renorm_terms(idx, gates, dropped, dw, &ps, base, pb, e, k);
                for j in 0..k {
                    let i = idx[base + j] as usize;
                    let g = kept_dw(dw, dropped, base + j);
                    if i < e {
                        m += (scale * g - dot) * (ps[pb + i] * inv);
                    }
                }
            }
            ms[ty] = m;
        }
        sync_cube();
        if cfg.softmax {
            let m = ms[ty];
            c = lane;
            while c < e {
                ds[pb + c] = ds[pb + c] - ps[pb + c] * m;
                c += lanes;
            }
            sync_cube();
        }
        if valid && lane == 0 {
            let base = row * k;
            let (inv, dot) = renorm_terms(idx, gates, dropped, dw, &ps, base, pb, e, k);
            for j in 0..k {
                let i = idx[base + j] as usize;
                let g = kept_dw(dw, dropped, base + j);
                if i < e {
                    let pi = ps[pb + i];
                    let q = pi * inv;
                    if cfg.softmax {
                        ds[pb + i] = ds[pb + i] + (scale * g - dot) * q;
                    } else {
                        ds[pb + i] = ds[pb + i] + (scale * g - dot) * q * (1.0 - pi);
                    }
                }
            }
        }
        sync_cube();
    }

    if cfg.has_z {
        // lse and softmax of the logits (recomputed: P is not the softmax under sigmoid).
        let (mx, sum) = row_max_exp_sum(z, &mut rs, row * e, valid, rb, lane, ninf, e, lanes);
        let cz = z_coef * (mx + f32::ln(sum));
        c = lane;
        while c < e {
            if cfg.softmax {
                ds[pb + c] = ds[pb + c] + cz * ps[pb + c];
            } else {
                let mut v = 0.0f32;
                if valid {
                    v = z[row * e + c];
                }
                ds[pb + c] = ds[pb + c] + cz * (f32::exp(v - mx) / sum);
            }
            c += lanes;
        }
    }

    if valid {
        c = lane;
        while c < e {
            dz[row * e + c] = ds[pb + c];
            c += lanes;
        }
    }
}

/// Enqueues the backward rows: `dz` (`n x E`). `lbl` is the `B x E` coefficient matrix with its
/// group length (tokens per sequence, dividing `n`).
#[allow(clippy::too_many_arguments)]
pub fn router_backward_rows<R: Runtime>(
    client: &ComputeClient<R>,
    o: &BackOptions,
    n: usize,
    z: &DevBuf<f32>,
    p: &DevBuf<f32>,
    idx: &DevBuf<u32>,
    gates: &DevBuf<f32>,
    dropped: &DevBuf<u32>,
    dw: &DevBuf<f32>,
    lbl: Option<(&DevBuf<f32>, usize)>,
    dz: &DevBuf<f32>,
) -> Result<(), KernelError> {
    let (e, k) = (o.e, o.k);
    if e == 0 || k == 0 || k > e {
        return Err(KernelError::Unsupported(format!("k = {k} with E = {e}")));
    }
    check_len2("logits", n, e, z.len)?;
    check_len2("scores", n, e, p.len)?;
    check_len2("indices", n, k, idx.len)?;
    check_len2("gates", n, k, gates.len)?;
    check_len2("dropped flags", n, k, dropped.len)?;
    check_len2("gate gradient", n, k, dw.len)?;
    check_len2("logit gradient", n, e, dz.len)?;
    let mut group_len = n.max(1);
    if let Some((coef, len)) = lbl {
        if len == 0 || n % len != 0 {
            return Err(KernelError::Unsupported(format!(
                "sequence length {len} does not divide {n}"
            )));
        }
        check_len2("LBL coefficients", n / len, e, coef.len)?;
        group_len = len;
    }
    if n == 0 {
        return Ok(());
    }
    fits_u32("logits", n * e)?;
    let (lanes, rows) = row_layout(e);
    let shape = BackShape {
        e,
        k,
        lanes,
        rows,
        softmax: o.softmax,
        renorm: o.renorm,
        has_lbl: lbl.is_some(),
        has_z: o.z_coef != 0.0,
    };
    let max_shared = client.properties().hardware.max_shared_memory_size;
    if 4 * rows * (2 * e + lanes) > max_shared {
        return Err(KernelError::Unsupported(format!(
            "E = {e} needs more shared memory than the device's {max_shared} bytes"
        )));
    }
    let dummy;
    let coef = match lbl {
        Some((c, _)) => c,
        None => {
            dummy = DevBuf::<f32>::empty(client, 1);
            &dummy
        }
    };
    unsafe {
        router_backward_kernel::launch_unchecked::<R>(
            client,
            grid(n.div_ceil(rows))?,
            CubeDim::new_2d(lanes as u32, rows as u32),
            z.arg(),
            p.arg(),
            idx.arg(),
            gates.arg(),
            dropped.arg(),
            dw.arg(),
            coef.arg(),
            dz.arg(),
            n as u32,
            group_len as u32,
            o.scale,
            o.z_coef,
            f32::NEG_INFINITY,
            shape,
        );
    }
    Ok(())
}
