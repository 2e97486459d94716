//! LBL coefficients from per-group kept counts and score sums (`groups x E` each), as the core's
//! `lbl::reference::lbl_value_and_coef`: `coef[b, e] = c_scale * counts[b, e]` (one elementwise kernel,
//! `c_scale = alpha E (k) / (k T_f T_p B)` computed on the host in f64), and the loss value
//! `sum coef * sums` ([`super::util::reduce_all`]: one cube, fixed order, deterministic).

use cubecl::prelude::*;

use super::util::{check_slot, reduce_all, Whole};
use super::{check_len, element_index, DevBuf, KernelError, Launch};

#[cube(launch_unchecked)]
fn lbl_coef_kernel(counts: &Array<u32>, coef: &mut Array<f32>, c_scale: f32, len: u32) {
    let i = element_index();
    if i < len as usize {
        coef[i] = f32::cast_from(counts[i]) * c_scale;
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
    check_slot("LBL value output", out, at)?;
    if let Some((launch, len)) = Launch::per_element("LBL coefficients", len)? {
        launch!(
            client,
            launch,
            lbl_coef_kernel(counts.arg(), coef.arg(), c_scale, len)
        );
    }
    reduce_all(client, Whole::Dot(coef, sums), out, at)
}
