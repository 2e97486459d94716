//! SimBal's element-wise pass on the Gram matrix, column normalisation for ScaleFree, its
//! backward projection, and the orthogonality error. The two GEMMs around them (`G = R^T R`,
//! `dR = R M`) are [`super::gemm`].
//!
//! Sums are per-cube partials reduced in a fixed order (deterministic).

use cubecl::prelude::*;

use super::util::{fill_zero, fits_u32, max_all, sum_all, tree_max, tree_sum};
use super::{check_len, check_len2, linear_cube, DevBuf, KernelError, Launch};

/// Elements of the Gram matrix per cube of the element-wise passes.
const BLOCK: usize = 4096;

/// SimBal norm, as a kernel constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `lambda sum |G|`, `M = 2 lambda sign(G)`.
    L1,
    /// `lambda sum G^2`, `M = 4 lambda G`.
    FrobeniusSq,
    /// `lambda mean G^2` on normalised columns, `M = 4 lambda G / E^2`.
    ScaleFree,
}

#[cube]
fn sign0(g: f32) -> f32 {
    let mut s = 0.0f32;
    if g > 0.0 {
        s = 1.0;
    }
    if g < 0.0 {
        s = -1.0;
    }
    s
}

/// Element `i` of `G = gram - I` (`E x E`).
#[cube]
fn residual_at(gram: &Array<f32>, i: usize, e: usize) -> f32 {
    let mut g = gram[i];
    if i / e == i % e {
        g -= 1.0;
    }
    g
}

/// In place: Gram `R^T R` to the multiplier `M`; per-cube partial of `sum |G|` or `sum G^2`.
#[cube(launch_unchecked)]
fn residual_kernel(
    gram: &mut Array<f32>,
    partial: &mut Array<f32>,
    e: u32,
    mul: f32,
    #[comptime] norm: Norm,
) {
    let cube = linear_cube();
    let lane = UNIT_POS as usize;
    let e = e as usize;
    let len = e * e;
    let mut s = SharedMemory::<f32>::new(256usize);
    let start = cube * BLOCK;
    let mut acc = 0.0f32;
    let mut i = start + lane;
    while i < start + BLOCK && i < len {
        let g = residual_at(gram, i, e);
        match norm {
            Norm::L1 => {
                acc += f32::abs(g);
                gram[i] = mul * sign0(g);
            }
            _ => {
                acc += g * g;
                gram[i] = mul * g;
            }
        }
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, lane, acc, 256usize);
    if lane == 0 {
        partial[cube] = total;
    }
}

/// Enqueues SimBal's element-wise pass on the `E x E` Gram matrix (in place, to the multiplier
/// `M` with `dL/dR = R M`) and writes the loss value to `loss[at]`.
pub fn simbal_residual<R: Runtime>(
    client: &ComputeClient<R>,
    norm: Norm,
    lambda: f32,
    e: usize,
    gram: &DevBuf<f32>,
    loss: &DevBuf<f32>,
    at: usize,
) -> Result<(), KernelError> {
    let (launch, cubes) = gram_pass(e, gram)?;
    let ee = (e * e) as f32;
    let (mul, factor) = match norm {
        Norm::L1 => (2.0 * lambda, lambda),
        Norm::FrobeniusSq => (4.0 * lambda, lambda),
        Norm::ScaleFree => (4.0 * lambda / ee, lambda / ee),
    };
    let partial = DevBuf::<f32>::empty(client, cubes);
    launch!(
        client,
        launch,
        residual_kernel(gram.arg(), partial.arg(), e as u32, mul, norm)
    );
    sum_all(client, &partial, loss, at, factor)
}

/// Checks the `E x E` Gram matrix of a pass over it; the pass's launch, [`BLOCK`] elements a
/// cube, and its number of cubes (of per-cube partials).
fn gram_pass(e: usize, gram: &DevBuf<f32>) -> Result<(Launch, usize), KernelError> {
    check_len2("Gram matrix", e, e, gram.len)?;
    fits_u32("Gram matrix", e * e)?;
    let cubes = (e * e).div_ceil(BLOCK).max(1);
    Ok((Launch::cubes(cubes)?, cubes))
}

/// Per-cube partials of `sum G^2` and `max |G|` with `G = gram - I`.
#[cube(launch_unchecked)]
fn ortho_kernel(gram: &Array<f32>, psum: &mut Array<f32>, pmax: &mut Array<f32>, e: u32) {
    let cube = linear_cube();
    let lane = UNIT_POS as usize;
    let e = e as usize;
    let len = e * e;
    let mut s = SharedMemory::<f32>::new(256usize);
    let start = cube * BLOCK;
    let mut acc = 0.0f32;
    let mut mx = 0.0f32;
    let mut i = start + lane;
    while i < start + BLOCK && i < len {
        let g = residual_at(gram, i, e);
        acc += g * g;
        let a = f32::abs(g);
        if a > mx {
            mx = a;
        }
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, lane, acc, 256usize);
    let top = tree_max(&mut s, 0usize, lane, mx, 256usize);
    if lane == 0 {
        psum[cube] = total;
        pmax[cube] = top;
    }
}

/// Enqueues the orthogonality error of a Gram matrix `R^T R` (`E x E`): `out[0] = mean G^2`,
/// `out[1] = max |G|`, `G = R^T R - I`.
pub fn ortho_error<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    gram: &DevBuf<f32>,
    out: &DevBuf<f32>,
) -> Result<(), KernelError> {
    let (launch, cubes) = gram_pass(e, gram)?;
    check_len("orthogonality error", 2, out.len)?;
    if e == 0 {
        return fill_zero(client, out);
    }
    let psum = DevBuf::<f32>::empty(client, cubes);
    let pmax = DevBuf::<f32>::empty(client, cubes);
    launch!(
        client,
        launch,
        ortho_kernel(gram.arg(), psum.arg(), pmax.arg(), e as u32)
    );
    max_all(client, &pmax, out, 1)?;
    sum_all(client, &psum, out, 0, 1.0 / (e * e) as f32)
}

/// `sum_i a[at] b[at]` down column `c` (`at = i rs + c cs`, `i < d`), over the cube's 256 lanes.
#[cube]
fn column_dot(
    a: &Array<f32>,
    b: &Array<f32>,
    s: &mut SharedMemory<f32>,
    c: usize,
    lane: usize,
    d: u32,
    rs: u32,
    cs: u32,
) -> f32 {
    let mut acc = 0.0f32;
    let mut i = lane;
    while i < d as usize {
        let at = i * rs as usize + c * cs as usize;
        acc += a[at] * b[at];
        i += 256usize;
    }
    tree_sum(s, 0usize, lane, acc, 256usize)
}

/// `1 / nrm`, 0 for a zero column.
#[cube]
fn inv_norm(nrm: f32) -> f32 {
    let mut inv = 0.0f32;
    if nrm > 0.0 {
        inv = 1.0 / nrm;
    }
    inv
}

/// Column norms and unit columns, one cube per column; `(rs, cs)` are the strides of `(d, e)`.
#[cube(launch_unchecked)]
fn normalize_kernel(
    r: &Array<f32>,
    norms: &mut Array<f32>,
    rn: &mut Array<f32>,
    d: u32,
    e: u32,
    rs: u32,
    cs: u32,
) {
    let c = linear_cube();
    let lane = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    if c < e as usize {
        let nrm = f32::sqrt(column_dot(r, r, &mut s, c, lane, d, rs, cs));
        if lane == 0 {
            norms[c] = nrm;
        }
        let inv = inv_norm(nrm);
        let mut i = lane;
        while i < d as usize {
            let at = i * rs as usize + c * cs as usize;
            rn[at] = r[at] * inv;
            i += 256usize;
        }
    }
}

/// `grad += (g - rn <rn, g>) / |r|` per column (0 for a zero column).
#[cube(launch_unchecked)]
fn project_kernel(
    rn: &Array<f32>,
    norms: &Array<f32>,
    g: &Array<f32>,
    grad: &mut Array<f32>,
    d: u32,
    e: u32,
    rs: u32,
    cs: u32,
) {
    let c = linear_cube();
    let lane = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    if c < e as usize {
        let dot = column_dot(rn, g, &mut s, c, lane, d, rs, cs);
        let inv = inv_norm(norms[c]);
        let mut i = lane;
        while i < d as usize {
            let at = i * rs as usize + c * cs as usize;
            grad[at] = grad[at] + (g[at] - rn[at] * dot) * inv;
            i += 256usize;
        }
    }
}

/// The launch (one cube per column) and the strides of `(d, e)` of a pass over the columns of a
/// weight stored `D x E` (`row_major_de`) or `E x D`; `None` without columns.
fn column_pass(
    row_major_de: bool,
    d: usize,
    e: usize,
) -> Result<Option<(Launch, u32, u32)>, KernelError> {
    fits_u32("router weight", d.saturating_mul(e))?;
    if e == 0 {
        return Ok(None);
    }
    let (rs, cs) = if row_major_de {
        (e as u32, 1)
    } else {
        (1, d as u32)
    };
    Ok(Some((Launch::cubes(e)?, rs, cs)))
}

/// Enqueues column norms (`E`) and the column-normalised weight `rn` (same layout as `r`).
pub fn normalize_columns<R: Runtime>(
    client: &ComputeClient<R>,
    row_major_de: bool,
    d: usize,
    e: usize,
    r: &DevBuf<f32>,
    norms: &DevBuf<f32>,
    rn: &DevBuf<f32>,
) -> Result<(), KernelError> {
    check_len2("router weight", d, e, r.len)?;
    check_len("column norms", e, norms.len)?;
    check_len2("normalised weight", d, e, rn.len)?;
    let Some((launch, rs, cs)) = column_pass(row_major_de, d, e)? else {
        return Ok(());
    };
    launch!(
        client,
        launch,
        normalize_kernel(r.arg(), norms.arg(), rn.arg(), d as u32, e as u32, rs, cs)
    );
    Ok(())
}

/// Enqueues `grad += (g - rn <rn, g>) / |r|` per column (the gradient through normalisation).
#[allow(clippy::too_many_arguments)]
pub fn scale_free_project<R: Runtime>(
    client: &ComputeClient<R>,
    row_major_de: bool,
    d: usize,
    e: usize,
    rn: &DevBuf<f32>,
    norms: &DevBuf<f32>,
    g: &DevBuf<f32>,
    grad: &DevBuf<f32>,
) -> Result<(), KernelError> {
    check_len2("normalised weight", d, e, rn.len)?;
    check_len("column norms", e, norms.len)?;
    check_len2("normalised gradient", d, e, g.len)?;
    check_len2("router gradient", d, e, grad.len)?;
    let Some((launch, rs, cs)) = column_pass(row_major_de, d, e)? else {
        return Ok(());
    };
    launch!(
        client,
        launch,
        project_kernel(
            rn.arg(),
            norms.arg(),
            g.arg(),
            grad.arg(),
            d as u32,
            e as u32,
            rs,
            cs,
        )
    );
    Ok(())
}
