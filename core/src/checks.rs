//! The preconditions of the [`crate::Backend`] kernels, stated once: the defaults check them and
//! so does every backend that overrides a kernel, on the lengths of its own buffers. Products
//! saturate, so absurd sizes are a length error, never an overflow panic.

use crate::config::RouterConfig;
use crate::error::{Result, SimbalError};
use crate::shape::check_len;

/// Lengths of the buffers of [`crate::Backend::route_rows`].
pub fn route_rows(
    cfg: &RouterConfig,
    n: usize,
    z: usize,
    bias: Option<usize>,
    p: usize,
    idx: usize,
    gates: usize,
) -> Result<()> {
    cfg.validate()?;
    let (ne, nk) = (n.saturating_mul(cfg.experts), n.saturating_mul(cfg.k));
    check_len("logits", ne, z)?;
    check_len("scores", ne, p)?;
    check_len("indices", nk, idx)?;
    check_len("gates", nk, gates)?;
    if let Some(b) = bias {
        check_len("selection bias", cfg.experts, b)?;
    }
    Ok(())
}

/// Lengths of the buffers of [`crate::Backend::dispatch`].
pub fn dispatch(
    cfg: &RouterConfig,
    n: usize,
    idx: usize,
    gates: usize,
    dropped: usize,
    counts: usize,
    order: usize,
    offsets: usize,
) -> Result<()> {
    cfg.validate()?;
    let nk = n.saturating_mul(cfg.k);
    check_len("indices", nk, idx)?;
    check_len("gates", nk, gates)?;
    check_len("dropped flags", nk, dropped)?;
    check_len("counts", cfg.experts, counts)?;
    check_len("dispatch order", nk, order)?;
    check_len("dispatch offsets", cfg.experts.saturating_add(1), offsets)
}

/// Lengths of the buffers of [`crate::Backend::router_backward_rows`]; `lbl` is the LBL's
/// `(group_len, coefficient buffer length)` when it is on.
pub fn router_backward_rows(
    cfg: &RouterConfig,
    n: usize,
    z: usize,
    p: usize,
    idx: usize,
    gates: usize,
    dropped: usize,
    dw: usize,
    lbl: Option<(usize, usize)>,
    dz: usize,
) -> Result<()> {
    cfg.validate()?;
    let e = cfg.experts;
    let (ne, nk) = (n.saturating_mul(e), n.saturating_mul(cfg.k));
    check_len("logits", ne, z)?;
    check_len("scores", ne, p)?;
    check_len("indices", nk, idx)?;
    check_len("gates", nk, gates)?;
    check_len("dropped flags", nk, dropped)?;
    check_len("gate gradient", nk, dw)?;
    check_len("logit gradient", ne, dz)?;
    if let Some((group_len, coef)) = lbl {
        group(group_len, n)?;
        check_len("LBL coefficients", (n / group_len).saturating_mul(e), coef)?;
    }
    Ok(())
}

/// Groups of `group_len` tokens must tile the `n` tokens.
pub fn group(group_len: usize, n: usize) -> Result<()> {
    crate::config::check_seq_len(group_len, n)
}

/// Every expert index must be below `e`; a bad index buffer is a backend error.
pub fn expert_indices(e: usize, idx: &[u32]) -> Result<()> {
    if idx.iter().any(|&i| i as usize >= e) {
        Err(SimbalError::Backend {
            message: alloc::string::String::from("an expert index is out of range"),
        })
    } else {
        Ok(())
    }
}
