//! Small shared pieces: fills, a deterministic full sum, and in-cube tree reductions over
//! shared memory used by the row kernels.

use cubecl::prelude::*;

use super::reduce::{row_partials, RowStat};
use super::{element_index, DevBuf, KernelError, Launch, NONE};

/// Writes the 32-bit word `value` into every element (an f32 fill passes its bits).
#[cube(launch_unchecked)]
fn fill_kernel(out: &mut Array<u32>, value: u32, len: u32) {
    let i = element_index();
    if i < len as usize {
        out[i] = value;
    }
}

/// Checks that a length fits the `u32` arithmetic of the kernels.
pub fn fits_u32(what: &'static str, len: usize) -> Result<u32, KernelError> {
    u32::try_from(len).map_err(|_| {
        KernelError::Unsupported(format!("{what} has {len} elements, more than u32::MAX"))
    })
}

fn not_4_bytes() -> KernelError {
    KernelError::Unsupported("fills of elements that are not 4 bytes wide".into())
}

/// Sets every element of `out` (of a 4-byte type) to the bits `bits`.
fn fill_words<R: Runtime, T: CubeElement>(
    client: &ComputeClient<R>,
    out: &DevBuf<T>,
    bits: u32,
) -> Result<(), KernelError> {
    if core::mem::size_of::<T>() != 4 {
        return Err(not_4_bytes());
    }
    let Some((launch, len)) = Launch::per_element("buffer", out.len)? else {
        return Ok(());
    };
    launch!(client, launch, fill_kernel(out.arg(), bits, len));
    Ok(())
}

/// Sets every element of `out` to `value`; elements must be 4 bytes wide (`f32`, `u32`).
///
/// # Errors
/// [`KernelError::Unsupported`] for elements of another width or more than `u32::MAX` of them.
pub fn fill<R: Runtime, T: CubeElement>(
    client: &ComputeClient<R>,
    out: &DevBuf<T>,
    value: T,
) -> Result<(), KernelError> {
    let bytes = T::as_bytes(core::slice::from_ref(&value));
    let bits = <[u8; 4]>::try_from(bytes).map_err(|_| not_4_bytes())?;
    fill_words(client, out, u32::from_ne_bytes(bits))
}

/// Zeroes `out` (all-zero bits: `0` and `0.0`); elements must be 4 bytes wide.
pub fn fill_zero<R: Runtime, T: CubeElement>(
    client: &ComputeClient<R>,
    out: &DevBuf<T>,
) -> Result<(), KernelError> {
    fill_words(client, out, 0)
}

/// What [`reduce_all_kernel`] computes of a whole buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WholeOp {
    /// `sum x`.
    Sum,
    /// `sum x y`.
    Dot,
    /// `max x`, NaN-skipping, at least 0.
    Max,
}

/// A whole array reduced by one cube, in a fixed order (deterministic): thread `t` takes
/// elements `t, t + 256, ...`, then a tree over the threads. Writes `out[at] = factor * total`.
#[cube(launch_unchecked)]
fn reduce_all_kernel(
    x: &Array<f32>,
    y: &Array<f32>,
    out: &mut Array<f32>,
    len: u32,
    at: u32,
    factor: f32,
    #[comptime] op: WholeOp,
) {
    let tx = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut acc = 0.0f32;
    let mut i = tx;
    while i < len as usize {
        match op {
            WholeOp::Sum => {
                acc += x[i];
            }
            WholeOp::Dot => {
                acc += x[i] * y[i];
            }
            WholeOp::Max => {
                let v = x[i];
                if v > acc {
                    acc = v;
                }
            }
        }
        i += 256usize;
    }
    let max = comptime!(op == WholeOp::Max);
    let total = tree_reduce(&mut s, 0usize, tx, acc, 256usize, max);
    if tx == 0 {
        out[at as usize] = factor * total;
    }
}

/// `at` as a kernel argument, when `out` has a slot there.
pub fn check_slot(what: &'static str, out: &DevBuf<f32>, at: usize) -> Result<u32, KernelError> {
    if at >= out.len {
        return Err(KernelError::Length {
            what,
            expected: at.saturating_add(1),
            actual: out.len,
        });
    }
    fits_u32(what, at)
}

/// A whole buffer reduced to one value by [`reduce_all`].
#[derive(Debug, Clone, Copy)]
pub enum Whole<'a> {
    /// `factor * sum x`.
    Sum(&'a DevBuf<f32>, f32),
    /// `sum_i a[i] b[i]` over the elements of `a`; `b` holds at least as many.
    Dot(&'a DevBuf<f32>, &'a DevBuf<f32>),
    /// `max(0, max x)` over the non-NaN elements of `x`.
    Max(&'a DevBuf<f32>),
    /// A per-row statistic summed over the rows; 0 in every element of `out` for an empty
    /// matrix.
    Rows(RowStat<'a>),
}

/// Enqueues `out[at] =` the reduction `what`, its final pass one cube in a fixed order
/// (deterministic).
pub fn reduce_all<R: Runtime>(
    client: &ComputeClient<R>,
    what: Whole<'_>,
    out: &DevBuf<f32>,
    at: usize,
) -> Result<(), KernelError> {
    let (op, x, y, factor) = match what {
        Whole::Sum(x, factor) => (WholeOp::Sum, x, x, factor),
        Whole::Dot(a, b) if b.len < a.len => {
            return Err(KernelError::Length {
                what: "dot operand",
                expected: a.len,
                actual: b.len,
            })
        }
        Whole::Dot(a, b) => (WholeOp::Dot, a, b, 1.0),
        Whole::Max(x) => (WholeOp::Max, x, x, 1.0),
        Whole::Rows(stat) => {
            return match row_partials(client, stat)? {
                Some((per_row, factor)) => {
                    reduce_all(client, Whole::Sum(&per_row, factor), out, at)
                }
                None => fill_zero(client, out),
            };
        }
    };
    let at = check_slot("reduction output", out, at)?;
    let len = fits_u32("reduced buffer", x.len)?;
    launch!(
        client,
        Launch::cubes(1)?,
        reduce_all_kernel(x.arg(), y.arg(), out.arg(), len, at, factor, op)
    );
    Ok(())
}

/// [`tree_sum`], or with `max` [`tree_max`] / [`tree_max_u32`]: one fixed-order tree for all.
#[cube]
fn tree_reduce<N: Numeric>(
    s: &mut SharedMemory<N>,
    base: usize,
    lane: usize,
    value: N,
    #[comptime] width: usize,
    #[comptime] max: bool,
) -> N {
    s[base + lane] = value;
    sync_cube();
    let mut stride = comptime!(width / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let other = s[base + lane + stride];
            if max {
                if other > s[base + lane] {
                    s[base + lane] = other;
                }
            } else {
                let v = s[base + lane] + other;
                s[base + lane] = v;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let total = s[base];
    sync_cube();
    total
}

/// Sum over the `width` lanes `s[base .. base + width]` of a cube (`width` a power of two); every
/// lane passes its `value` and gets the total. All threads of the cube must call it (it syncs).
#[cube]
pub fn tree_sum(
    s: &mut SharedMemory<f32>,
    base: usize,
    lane: usize,
    value: f32,
    #[comptime] width: usize,
) -> f32 {
    tree_reduce::<f32>(s, base, lane, value, width, false)
}

/// Maximum over lanes, NaN-skipping (a NaN never replaces a number, as in the reference's
/// `if x > m`). See [`tree_sum()`] for the calling convention.
#[cube]
pub fn tree_max(
    s: &mut SharedMemory<f32>,
    base: usize,
    lane: usize,
    value: f32,
    #[comptime] width: usize,
) -> f32 {
    tree_reduce::<f32>(s, base, lane, value, width, true)
}

/// `|v|` as ordered bits: with the sign cleared, the `u32` order of the bits is the order of the
/// values, and every NaN sorts above `+inf`, so an integer maximum of them keeps a NaN (which a
/// float `>` would drop) and does not depend on the order it runs in.
#[cube]
pub fn abs_bits(v: f32) -> u32 {
    u32::reinterpret(v) & 0x7FFF_FFFFu32
}

/// Maximum of `u32`s over the `width` lanes `s[base .. base + width]` of a cube (`width` a
/// power of two); every lane passes its `value` and gets the maximum. All threads of the cube
/// must call it (it syncs).
#[cube]
pub fn tree_max_u32(
    s: &mut SharedMemory<u32>,
    base: usize,
    lane: usize,
    value: u32,
    #[comptime] width: usize,
) -> u32 {
    tree_reduce::<u32>(s, base, lane, value, width, true)
}

/// Whether `v` is NaN, from its bits (immune to fast-math assumptions of shader compilers).
#[cube]
pub fn is_nan_bits(v: f32) -> bool {
    let b = u32::reinterpret(v);
    (b & 0x7F80_0000u32) == 0x7F80_0000u32 && (b & 0x007F_FFFFu32) != 0u32
}

/// Whether `v` is infinite or NaN, from its bits.
#[cube]
pub fn is_non_finite_bits(v: f32) -> bool {
    (u32::reinterpret(v) & 0x7F80_0000u32) == 0x7F80_0000u32
}

/// Whether `(sa, a)` ranks strictly before `(sb, b)`: higher score, then lower index.
#[cube]
pub fn before(sa: f32, a: u32, sb: f32, b: u32) -> bool {
    sa > sb || (sa == sb && a < b)
}

/// Whether `(s, i)` ranks strictly after the previous pick `(prev_s, prev_i)` under [`before()`]
/// (any candidate does when there is no previous pick, `prev_i` = [`super::NONE`]).
#[cube]
pub fn after(prev_s: f32, prev_i: u32, s: f32, i: u32) -> bool {
    prev_i == NONE || before(prev_s, prev_i, s, i)
}

/// Arg-max over lanes under [`before()`]; lanes pass `(score, index)` (index [`super::NONE`] for
/// none) and all get the winner. See [`tree_sum()`] for the calling convention.
#[cube]
pub fn tree_argmax(
    s: &mut SharedMemory<f32>,
    si: &mut SharedMemory<u32>,
    base: usize,
    lane: usize,
    score: f32,
    index: u32,
    #[comptime] width: usize,
) -> (f32, u32) {
    s[base + lane] = score;
    si[base + lane] = index;
    sync_cube();
    let mut stride = comptime!(width / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let os = s[base + lane + stride];
            let oi = si[base + lane + stride];
            if before(os, oi, s[base + lane], si[base + lane]) {
                s[base + lane] = os;
                si[base + lane] = oi;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let bs = s[base];
    let bi = si[base];
    sync_cube();
    (bs, bi)
}

/// Exclusive prefix sum over the 256 lanes of a cube (Hillis-Steele, double-buffered in
/// `s[0..512]`); returns `(exclusive prefix, total)`. All threads must call it.
#[cube]
pub fn block_scan_u32(s: &mut SharedMemory<u32>, lane: usize, value: u32) -> (u32, u32) {
    s[lane] = value;
    sync_cube();
    let mut src = 0usize;
    let mut offset = 1usize;
    while offset < 256 {
        let dst = 256 - src;
        let mut v = s[src + lane];
        if lane >= offset {
            v += s[src + lane - offset];
        }
        s[dst + lane] = v;
        sync_cube();
        src = dst;
        offset *= 2;
    }
    let inclusive = s[src + lane];
    let total = s[src + 255];
    sync_cube();
    (inclusive - value, total)
}
