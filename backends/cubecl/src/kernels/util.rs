//! Small shared pieces: fills, a deterministic full sum, and in-cube tree reductions over
//! shared memory used by the row kernels.

#![allow(unsafe_code)] // kernel launches: see the module docs of `kernels`

use cubecl::prelude::*;

use super::{grid, linear_cube, DevBuf, KernelError};

/// Threads of the 1D helper kernels.
pub const THREADS: u32 = 256;

#[cube(launch_unchecked)]
fn fill_f32_kernel(out: &mut Array<f32>, value: f32, len: u32) {
    let i = linear_cube() * CUBE_DIM as usize + UNIT_POS as usize;
    if i < len as usize {
        out[i] = value;
    }
}

#[cube(launch_unchecked)]
fn fill_u32_kernel(out: &mut Array<u32>, value: u32, len: u32) {
    let i = linear_cube() * CUBE_DIM as usize + UNIT_POS as usize;
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

/// Sets every element of `out` to `value`.
pub fn fill_f32<R: Runtime>(
    client: &ComputeClient<R>,
    out: &DevBuf<f32>,
    value: f32,
) -> Result<(), KernelError> {
    if out.len == 0 {
        return Ok(());
    }
    let len = fits_u32("buffer", out.len)?;
    let cubes = out.len.div_ceil(THREADS as usize);
    unsafe {
        fill_f32_kernel::launch_unchecked::<R>(
            client,
            grid(cubes)?,
            CubeDim::new_1d(THREADS),
            out.arg(),
            value,
            len,
        );
    }
    Ok(())
}

/// Sets every element of `out` to `value`.
pub fn fill_u32<R: Runtime>(
    client: &ComputeClient<R>,
    out: &DevBuf<u32>,
    value: u32,
) -> Result<(), KernelError> {
    if out.len == 0 {
        return Ok(());
    }
    let len = fits_u32("buffer", out.len)?;
    let cubes = out.len.div_ceil(THREADS as usize);
    unsafe {
        fill_u32_kernel::launch_unchecked::<R>(
            client,
            grid(cubes)?,
            CubeDim::new_1d(THREADS),
            out.arg(),
            value,
            len,
        );
    }
    Ok(())
}

/// Sum of a whole array by one cube, in a fixed order (deterministic): thread `t` adds elements
/// `t, t + 256, ...`, then a tree over the threads. Writes `out[at]`.
#[cube(launch_unchecked)]
fn sum_all_kernel(x: &Array<f32>, out: &mut Array<f32>, len: u32, at: u32, factor: f32) {
    let tx = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut acc = 0.0f32;
    let mut i = tx;
    while i < len as usize {
        acc += x[i];
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, tx, acc, 256usize);
    if tx == 0 {
        out[at as usize] = factor * total;
    }
}

/// `out[at] = factor * sum(x)`, deterministic.
pub fn sum_all<R: Runtime>(
    client: &ComputeClient<R>,
    x: &DevBuf<f32>,
    out: &DevBuf<f32>,
    at: usize,
    factor: f32,
) -> Result<(), KernelError> {
    if at >= out.len {
        return Err(KernelError::Length {
            what: "sum output",
            expected: at + 1,
            actual: out.len,
        });
    }
    let len = fits_u32("summed buffer", x.len)?;
    unsafe {
        sum_all_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(256),
            x.arg(),
            out.arg(),
            len,
            at as u32,
            factor,
        );
    }
    Ok(())
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
    s[base + lane] = value;
    sync_cube();
    let mut stride = comptime!(width / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let v = s[base + lane] + s[base + lane + stride];
            s[base + lane] = v;
        }
        sync_cube();
        stride /= 2;
    }
    let total = s[base];
    sync_cube();
    total
}

/// Maximum over lanes, NaN-skipping (a NaN never replaces a number, as in the reference's
/// `if x > m`). See [`tree_sum`] for the calling convention.
#[cube]
pub fn tree_max(
    s: &mut SharedMemory<f32>,
    base: usize,
    lane: usize,
    value: f32,
    #[comptime] width: usize,
) -> f32 {
    s[base + lane] = value;
    sync_cube();
    let mut stride = comptime!(width / 2).runtime();
    while stride > 0 {
        if lane < stride {
            let other = s[base + lane + stride];
            if other > s[base + lane] {
                s[base + lane] = other;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let total = s[base];
    sync_cube();
    total
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

/// Arg-max over lanes under [`before`]; lanes pass `(score, index)` (index [`super::NONE`] for
/// none) and all get the winner. See [`tree_sum`] for the calling convention.
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
