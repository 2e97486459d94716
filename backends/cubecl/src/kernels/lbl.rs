//! LBL coefficients from per-group kept counts and score sums (`groups x E` each), as the core's
//! `ops::lbl::lbl_value_and_coef`: `coef[b, e] = c_scale * counts[b, e]` (one elementwise kernel,
//! `c_scale = alpha E (k) / (k T_f T_p B)` computed on the host in f64), and the loss value
//! `sum coef * sums` (one cube, fixed order: deterministic).

#![allow(unsafe_code)] // kernel launches: see the module docs of `kernels`

use cubecl::prelude::*;

use super::util::{fits_u32, tree_sum, THREADS};
use super::{check_len, grid, linear_cube, DevBuf, KernelError};

#[cube(launch_unchecked)]
fn lbl_coef_kernel(counts: &Array<u32>, coef: &mut Array<f32>, c_scale: f32, len: u32) {
    let i = linear_cube() * CUBE_DIM as usize + UNIT_POS as usize;
    if i < len as usize {
        coef[i] = f32::cast_from(counts[i]) * c_scale;
    }
}

/// `out[at] = sum_i a[i] b[i]` by one cube: thread `t` adds `t, t + 256, ...`, then a tree.
#[cube(launch_unchecked)]
fn dot_kernel(a: &Array<f32>, b: &Array<f32>, out: &mut Array<f32>, len: u32, at: u32) {
    let tx = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut acc = 0.0f32;
    let mut i = tx;
    while i < len as usize {
        acc += a[i] * b[i];
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, tx, acc, 256usize);
    if tx == 0 {
        out[at as usize] = total;
    }
}

/// Enqueues `coef = c_scale * counts` (element-wise, counts as f32) and `out[at] = sum coef *
/// sums`. `counts`, `sums` and `coef` must have the same length; an empty one writes `out[at] =
/// 0`.
pub fn lbl_coefficients<R: Runtime>(
    client: &ComputeClient<R>,
    c_scale: f32,
    counts: &DevBuf<u32>,
    sums: &DevBuf<f32>,
    coef: &DevBuf<f32>,
    out: &DevBuf<f32>,
    at: usize,
) -> Result<(), KernelError> {
    let len = coef.len;
    check_len("LBL group counts", len, counts.len)?;
    check_len("LBL group sums", len, sums.len)?;
    if at >= out.len {
        return Err(KernelError::Length {
            what: "LBL value output",
            expected: at.saturating_add(1),
            actual: out.len,
        });
    }
    let len32 = fits_u32("LBL coefficients", len)?;
    let at32 = fits_u32("LBL value position", at)?;
    if len > 0 {
        unsafe {
            lbl_coef_kernel::launch_unchecked::<R>(
                client,
                grid(len.div_ceil(THREADS as usize))?,
                CubeDim::new_1d(THREADS),
                counts.arg(),
                coef.arg(),
                c_scale,
                len32,
            );
        }
    }
    unsafe {
        dot_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(256),
            coef.arg(),
            sums.arg(),
            out.arg(),
            len32,
            at32,
        );
    }
    Ok(())
}
