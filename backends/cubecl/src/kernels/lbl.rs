//! LBL coefficients from per-group kept counts and score sums (`groups x E` each), as the core's
//! `lbl::reference::lbl_value_and_coef`: `coef[b, e] = c_scale * counts[b, e]` (`c_scale =
//! alpha E (k) / (k T_f T_p B)` computed on the host in f64) and the loss value `sum coef *
//! sums`, both in one launch (one cube, fixed order, deterministic).

use cubecl::prelude::*;

use super::util::{check_slot, fits_u32, tree_sum};
use super::{check_len, DevBuf, KernelError, Launch};

/// One cube, in a fixed order: `coef[i] = c_scale * counts[i]` and `out[at] = sum_i coef[i]
/// sums[i]` (thread `t` takes `t, t + 256, ...`, then a tree), so the coefficients and the
/// value are one launch; the same sum, in the same order, as [`super::util::reduce_all`]'s dot.
#[cube(launch_unchecked)]
fn lbl_coef_kernel(
    counts: &Array<u32>,
    sums: &Array<f32>,
    coef: &mut Array<f32>,
    out: &mut Array<f32>,
    c_scale: f32,
    len: u32,
    at: u32,
) {
    let tx = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut acc = 0.0f32;
    let mut i = tx;
    while i < len as usize {
        let c = f32::cast_from(counts[i]) * c_scale;
        coef[i] = c;
        acc += c * sums[i];
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, tx, acc, 256usize);
    if tx == 0 {
        out[at as usize] = total;
    }
}

/// Enqueues `coef = c_scale * counts` (element-wise, counts as f32) and `out[at] = sum coef *
/// sums`, one launch (one cube: the lengths are `groups x E`, and a fixed order keeps the value
/// deterministic). `counts`, `sums` and `coef` must have the same length; an empty one writes
/// `out[at] = 0`.
///
/// # Errors
/// [`KernelError::Length`] for buffers of different lengths or no slot `at` in `out`;
/// [`KernelError::Unsupported`] past `u32` elements.
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
    let at = check_slot("LBL value output", out, at)?;
    let len = fits_u32("LBL coefficients", len)?;
    launch!(
        client,
        Launch::cubes(1)?,
        lbl_coef_kernel(
            counts.arg(),
            sums.arg(),
            coef.arg(),
            out.arg(),
            c_scale,
            len,
            at
        )
    );
    Ok(())
}
