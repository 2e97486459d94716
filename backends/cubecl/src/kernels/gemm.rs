//! Tiled f32 GEMM: `C = alpha op(A) op(B) + beta C`, row-major, with transpose flags, and two
//! skinny kernels for the router's products with an `E`-wide output (`E <= 8`): `Z = X R`
//! (reduction along rows of `X`) and `dR = X^T dZ` (reduction over tokens, split when the columns
//! alone give few cubes), which read `X` once, coalesced, instead of through 64-wide tiles.
//!
//! cubecl 0.10.0 ships no matrix multiply of its own (`cubecl-matmul` stops at 0.9, `cubek-matmul`
//! 0.2 is a large separate engine), so this is a classic shared-memory tiled kernel: 64 x 64 output
//! tiles, 16-deep K slices, 256 threads each owning a 4 x 4 strided micro-tile. Each output is
//! accumulated in K order, like the reference triple loop. Large-K, small-output products
//! (`dR = X^T dZ`) split K over cubes into a workspace that a second pass sums in a fixed order,
//! so results stay deterministic.

#![allow(unsafe_code)] // kernel launches: see the module docs of `kernels`

use cubecl::prelude::*;

use super::util::fits_u32;
use super::{check_len2, DevBuf, KernelError, MAX_GRID_DIM};

const BM: usize = 64;
const BN: usize = 64;
const BK: usize = 16;
const TS: usize = 16; // threads per side
const MT: usize = 4; // micro-tile side
/// Row stride of the staged tiles: one float of padding, so the K-major stores of untransposed
/// `A` and transposed `B` (16 threads, one per K index) hit 16 different banks.
const SA: usize = BM + 1;
const SB: usize = BN + 1;

/// Widest output the skinny kernels take (the router's `E`); wider outputs use the tiled kernel.
/// Measured on an H200: at `E = 8` the skinny kernels took `X R` from 0.66 to 0.16 ms and
/// `X^T dZ` from 0.46 to 0.09 ms (4096 x 4096); at `E = 32` they were slower than the tiles
/// (0.49 against 0.08 ms for 4096 x 768: 32 accumulators a thread and a 32-wide shared-memory
/// tree), so only `E <= 8` takes them. `9..=16` is unmeasured and stays on the tiles.
pub const SKINNY_MAX_N: usize = 8;
/// Least rows of the output and least inner dimension for the skinny kernels.
const SKINNY_MIN_DIM: usize = 64;
/// Threads of a skinny cube along the reduction (nn) or along the output rows (tn).
const SK_LANES: usize = 32;
/// Output rows (nn) or token lanes (tn) per skinny cube.
const SK_ROWS: usize = 8;

/// GEMM description (mirrors `simbal_core::Gemm`, in f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmDims {
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// `A` stored `k x m`.
    pub trans_a: bool,
    /// `B` stored `n x k`.
    pub trans_b: bool,
    /// Product scale.
    pub alpha: f32,
    /// Scale of the old `C` (0 overwrites, ignoring NaN in `C`).
    pub beta: f32,
}

/// `c[o] = alpha v + beta c[o]`; `beta_zero` overwrites (an old NaN in `C` is ignored).
#[cube]
fn store(c: &mut Array<f32>, o: usize, v: f32, alpha: f32, beta: f32, #[comptime] beta_zero: bool) {
    if beta_zero {
        c[o] = alpha * v;
    } else {
        c[o] = alpha * v + beta * c[o];
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    m: u32,
    n: u32,
    k: u32,
    k_chunk: u32,
    alpha: f32,
    beta: f32,
    #[comptime] trans_a: bool,
    #[comptime] trans_b: bool,
    #[comptime] beta_zero: bool,
    #[comptime] split: bool,
) {
    let m = m as usize;
    let n = n as usize;
    let k = k as usize;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = ty * TS + tx;
    let row0 = CUBE_POS_Y as usize * BM;
    let col0 = CUBE_POS_X as usize * BN;
    // Split-K: cube z handles K range [k_begin, k_end) and writes slice z of the workspace.
    let k_begin = CUBE_POS_Z as usize * k_chunk as usize;
    let mut k_end = k_begin + k_chunk as usize;
    if k_end > k {
        k_end = k;
    }

    let mut sa = SharedMemory::<f32>::new(BK * SA);
    let mut sb = SharedMemory::<f32>::new(BK * SB);
    let mut acc = Array::<f32>::new(MT * MT);
    #[unroll]
    for i in 0..MT * MT {
        acc[i] = 0.0;
    }
    let mut ra = Array::<f32>::new(MT);
    let mut rb = Array::<f32>::new(MT);

    let mut l0 = k_begin;
    while l0 < k_end {
        // Stage op(A)[row0.., l0..] into sa[l * SA + i].
        #[unroll]
        for r in 0..(BM * BK) / (TS * TS) {
            let e = tid + r * TS * TS;
            let ii = if trans_a { e % BM } else { e / BK };
            let li = if trans_a { e / BM } else { e % BK };
            let gi = row0 + ii;
            let gl = l0 + li;
            let mut v = 0.0f32;
            if gi < m && gl < k_end {
                if trans_a {
                    v = a[gl * m + gi];
                } else {
                    v = a[gi * k + gl];
                }
            }
            sa[li * SA + ii] = v;
        }
        // Stage op(B)[l0.., col0..] into sb[l * SB + j].
        #[unroll]
        for r in 0..(BN * BK) / (TS * TS) {
            let e = tid + r * TS * TS;
            let jj = if trans_b { e / BK } else { e % BN };
            let li = if trans_b { e % BK } else { e / BN };
            let gj = col0 + jj;
            let gl = l0 + li;
            let mut v = 0.0f32;
            if gj < n && gl < k_end {
                if trans_b {
                    v = b[gj * k + gl];
                } else {
                    v = b[gl * n + gj];
                }
            }
            sb[li * SB + jj] = v;
        }
        sync_cube();
        #[unroll]
        for l in 0..BK {
            #[unroll]
            for r in 0..MT {
                ra[r] = sa[l * SA + ty + r * TS];
            }
            #[unroll]
            for q in 0..MT {
                rb[q] = sb[l * SB + tx + q * TS];
            }
            #[unroll]
            for r in 0..MT {
                #[unroll]
                for q in 0..MT {
                    acc[r * MT + q] += ra[r] * rb[q];
                }
            }
        }
        sync_cube();
        l0 += BK;
    }

    let slice = CUBE_POS_Z as usize * m * n;
    #[unroll]
    for r in 0..MT {
        #[unroll]
        for q in 0..MT {
            let i = row0 + ty + r * TS;
            let j = col0 + tx + q * TS;
            if i < m && j < n {
                if split {
                    c[slice + i * n + j] = acc[r * MT + q];
                } else {
                    store(c, i * n + j, acc[r * MT + q], alpha, beta, beta_zero);
                }
            }
        }
    }
}

/// Fixed-order tree over `count` threads of their `n` accumulators each: thread `me` stores
/// `acc` at `s[base..base + n]`, and its partner `stride` threads on sits `stride * step` slots
/// further; the total ends in the slots of thread 0. All threads of the cube must call it.
#[cube]
fn sum_accumulators(
    acc: &Array<f32>,
    s: &mut SharedMemory<f32>,
    base: usize,
    me: usize,
    #[comptime] n: usize,
    #[comptime] count: usize,
    #[comptime] step: usize,
) {
    #[unroll]
    for j in 0..n {
        s[base + j] = acc[j];
    }
    sync_cube();
    let mut stride = comptime!(count / 2).runtime();
    while stride > 0 {
        if me < stride {
            #[unroll]
            for j in 0..n {
                s[base + j] = s[base + j] + s[base + stride * step + j];
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// Skinny `C = alpha A op(B) + beta C` (`A` row-major `m x k`, `C` `m x n`, `n <= SKINNY_MAX_N`): the
/// router's `Z = X R`. A cube holds 8 rows; its 32 lanes per row sum strided shares of `k`
/// (coalesced reads of `A`), the `n` partial sums in registers, then a fixed-order tree over the
/// lanes in shared memory. One pass over `A`, no tiles wasted on absent columns.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn skinny_nn_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    m: u32,
    k: u32,
    alpha: f32,
    beta: f32,
    #[comptime] n: usize,
    #[comptime] trans_b: bool,
    #[comptime] beta_zero: bool,
) {
    let lane = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let row = crate::kernels::linear_cube() * SK_ROWS + y;
    let m = m as usize;
    let k = k as usize;
    let mut acc = Array::<f32>::new(n);
    #[unroll]
    for j in 0..n {
        acc[j] = 0.0;
    }
    if row < m {
        let mut l = lane;
        while l < k {
            let x = a[row * k + l];
            #[unroll]
            for j in 0..n {
                let bv = if trans_b { b[j * k + l] } else { b[l * n + j] };
                acc[j] += x * bv;
            }
            l += SK_LANES;
        }
    }
    let mut s = SharedMemory::<f32>::new(comptime!(SK_LANES * SK_ROWS * n));
    let base = (y * SK_LANES + lane) * n;
    sum_accumulators(&acc, &mut s, base, lane, n, SK_LANES, n);
    if row < m && lane < n {
        store(
            c,
            row * n + lane,
            s[y * SK_LANES * n + lane],
            alpha,
            beta,
            beta_zero,
        );
    }
}

/// Skinny `C = alpha A^T B + beta C` (`A` stored `k x m`, `B` `k x n` row-major,
/// `n <= SKINNY_MAX_N`): the
/// router's `dR = X^T dZ`. A cube holds 32 consecutive columns of `A` (coalesced reads) and 8
/// token lanes, each summing a strided share of its split's tokens; a fixed-order tree over the
/// token lanes, then (`split`) one slice of the workspace per split, summed in order after.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn skinny_tn_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    m: u32,
    k: u32,
    k_chunk: u32,
    alpha: f32,
    beta: f32,
    #[comptime] n: usize,
    #[comptime] beta_zero: bool,
    #[comptime] split: bool,
) {
    let lane = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let col = CUBE_POS_X as usize * SK_LANES + lane;
    let m = m as usize;
    let k = k as usize;
    let t_begin = CUBE_POS_Y as usize * k_chunk as usize;
    let mut t_end = t_begin + k_chunk as usize;
    if t_end > k {
        t_end = k;
    }
    let mut acc = Array::<f32>::new(n);
    #[unroll]
    for j in 0..n {
        acc[j] = 0.0;
    }
    if col < m {
        let mut t = t_begin + y;
        while t < t_end {
            let x = a[t * m + col];
            #[unroll]
            for j in 0..n {
                acc[j] += x * b[t * n + j];
            }
            t += SK_ROWS;
        }
    }
    let mut s = SharedMemory::<f32>::new(comptime!(SK_LANES * SK_ROWS * n));
    let base = (y * SK_LANES + lane) * n;
    sum_accumulators(&acc, &mut s, base, y, n, SK_ROWS, comptime!(SK_LANES * n));
    if y == 0 && col < m {
        let slice = CUBE_POS_Y as usize * m * n;
        #[unroll]
        for j in 0..n {
            let v = s[lane * n + j];
            let o = col * n + j;
            if split {
                c[slice + o] = v;
            } else {
                store(c, o, v, alpha, beta, beta_zero);
            }
        }
    }
}

/// Sums the split-K slices in slice order and applies alpha/beta.
#[cube(launch_unchecked)]
fn split_reduce_kernel(
    work: &Array<f32>,
    c: &mut Array<f32>,
    len: u32,
    splits: u32,
    alpha: f32,
    beta: f32,
    #[comptime] beta_zero: bool,
) {
    let i = crate::kernels::linear_cube() * CUBE_DIM as usize + UNIT_POS as usize;
    let len = len as usize;
    if i < len {
        let mut s = 0.0f32;
        for z in 0..splits as usize {
            s += work[z * len + i];
        }
        store(c, i, s, alpha, beta, beta_zero);
    }
}

/// How many K splits to use: only when the output grid is small and K is long.
fn choose_splits(tiles: usize, k: usize) -> usize {
    const TARGET_CUBES: usize = 128;
    const MIN_K_PER_SPLIT: usize = 256;
    if tiles >= TARGET_CUBES / 2 || k < 2 * MIN_K_PER_SPLIT {
        return 1;
    }
    let by_tiles = TARGET_CUBES.div_ceil(tiles);
    let by_k = k / MIN_K_PER_SPLIT;
    by_tiles.min(by_k).clamp(1, 64)
}

/// Enqueues `C = alpha op(A) op(B) + beta C`.
pub fn gemm<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
    c: &DevBuf<f32>,
) -> Result<(), KernelError> {
    check_len2("GEMM operand A", g.m, g.k, a.len)?;
    check_len2("GEMM operand B", g.k, g.n, b.len)?;
    check_len2("GEMM operand C", g.m, g.n, c.len)?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    if g.k == 0 {
        // op(A) op(B) is zero: C = beta C (beta = 0 overwrites).
        return if g.beta == 0.0 {
            super::util::fill_f32(client, c, 0.0)
        } else {
            scale(client, c, g.beta)
        };
    }
    let (m, n, k) = (
        fits_u32("GEMM m", g.m)?,
        fits_u32("GEMM n", g.n)?,
        fits_u32("GEMM k", g.k)?,
    );
    fits_u32("GEMM operand A", a.len)?;
    fits_u32("GEMM operand B", b.len)?;
    let skinny = g.n <= SKINNY_MAX_N && g.m >= SKINNY_MIN_DIM && g.k >= SKINNY_MIN_DIM;
    if skinny && !g.trans_a {
        return skinny_nn(client, g, a, b, c);
    }
    if skinny && !g.trans_b {
        return skinny_tn(client, g, a, b, c);
    }
    let gx = g.n.div_ceil(BN);
    let gy = g.m.div_ceil(BM);
    if gx > MAX_GRID_DIM || gy > MAX_GRID_DIM {
        return Err(KernelError::Unsupported(format!(
            "GEMM of {} x {} exceeds the grid limit",
            g.m, g.n
        )));
    }
    let splits = choose_splits(gx * gy, g.k);
    let chunk = g.k.div_ceil(splits).div_ceil(BK) * BK;
    let splits = g.k.div_ceil(chunk);
    let work = SplitWork::new(client, g, splits)?;
    unsafe {
        gemm_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(gx as u32, gy as u32, splits as u32),
            CubeDim::new_2d(TS as u32, TS as u32),
            a.arg(),
            b.arg(),
            work.target(c).arg(),
            m,
            n,
            k,
            chunk as u32,
            g.alpha,
            g.beta,
            g.trans_a,
            g.trans_b,
            g.beta == 0.0,
            work.is_split(),
        );
    }
    work.finish(client, g, c)
}

/// The split-K workspace of a product split `splits` ways: one `m x n` slice per split, summed
/// in slice order after; none (the kernel writes `C`) for one split.
struct SplitWork {
    splits: usize,
    work: Option<DevBuf<f32>>,
}

impl SplitWork {
    fn new<R: Runtime>(
        client: &ComputeClient<R>,
        g: &GemmDims,
        splits: usize,
    ) -> Result<Self, KernelError> {
        let work = if splits > 1 {
            let w = DevBuf::<f32>::empty(client, splits * g.m * g.n);
            fits_u32("GEMM split workspace", w.len)?;
            Some(w)
        } else {
            None
        };
        Ok(Self { splits, work })
    }
    fn is_split(&self) -> bool {
        self.work.is_some()
    }
    /// Where the kernel writes: the workspace, or `C` itself.
    fn target<'a>(&'a self, c: &'a DevBuf<f32>) -> &'a DevBuf<f32> {
        self.work.as_ref().unwrap_or(c)
    }
    /// `C = alpha (sum of the slices) + beta C` for a split product.
    fn finish<R: Runtime>(
        self,
        client: &ComputeClient<R>,
        g: &GemmDims,
        c: &DevBuf<f32>,
    ) -> Result<(), KernelError> {
        match &self.work {
            Some(w) => reduce_splits(client, g, self.splits, w, c),
            None => Ok(()),
        }
    }
}

/// [`skinny_nn_kernel`] over all rows (sizes checked by [`gemm`]).
fn skinny_nn<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
    c: &DevBuf<f32>,
) -> Result<(), KernelError> {
    unsafe {
        skinny_nn_kernel::launch_unchecked::<R>(
            client,
            super::grid(g.m.div_ceil(SK_ROWS))?,
            CubeDim::new_2d(SK_LANES as u32, SK_ROWS as u32),
            a.arg(),
            b.arg(),
            c.arg(),
            g.m as u32,
            g.k as u32,
            g.alpha,
            g.beta,
            g.n,
            g.trans_b,
            g.beta == 0.0,
        );
    }
    Ok(())
}

/// [`skinny_tn_kernel`], splitting the tokens when the columns alone give few cubes.
fn skinny_tn<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
    c: &DevBuf<f32>,
) -> Result<(), KernelError> {
    const TARGET_CUBES: usize = 512;
    const MIN_K_PER_SPLIT: usize = 256;
    let gx = g.m.div_ceil(SK_LANES);
    if gx > MAX_GRID_DIM {
        return Err(KernelError::Unsupported(format!(
            "GEMM of {} x {} exceeds the grid limit",
            g.m, g.n
        )));
    }
    let splits = TARGET_CUBES
        .div_ceil(gx)
        .min(g.k / MIN_K_PER_SPLIT)
        .clamp(1, 64);
    let chunk = g.k.div_ceil(splits);
    let splits = g.k.div_ceil(chunk);
    let work = SplitWork::new(client, g, splits)?;
    unsafe {
        skinny_tn_kernel::launch_unchecked::<R>(
            client,
            CubeCount::Static(gx as u32, splits as u32, 1),
            CubeDim::new_2d(SK_LANES as u32, SK_ROWS as u32),
            a.arg(),
            b.arg(),
            work.target(c).arg(),
            g.m as u32,
            g.k as u32,
            chunk as u32,
            g.alpha,
            g.beta,
            g.n,
            g.beta == 0.0,
            work.is_split(),
        );
    }
    work.finish(client, g, c)
}

/// `C = alpha (sum of the `splits` slices of `work`, in slice order) + beta C`.
fn reduce_splits<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    splits: usize,
    work: &DevBuf<f32>,
    c: &DevBuf<f32>,
) -> Result<(), KernelError> {
    let len = g.m * g.n;
    unsafe {
        split_reduce_kernel::launch_unchecked::<R>(
            client,
            super::grid(len.div_ceil(256))?,
            CubeDim::new_1d(256),
            work.arg(),
            c.arg(),
            len as u32,
            splits as u32,
            g.alpha,
            g.beta,
            g.beta == 0.0,
        );
    }
    Ok(())
}

#[cube(launch_unchecked)]
fn scale_kernel(c: &mut Array<f32>, len: u32, f: f32) {
    let i = crate::kernels::linear_cube() * CUBE_DIM as usize + UNIT_POS as usize;
    if i < len as usize {
        c[i] = f * c[i];
    }
}

/// `c *= f` element-wise.
pub fn scale<R: Runtime>(
    client: &ComputeClient<R>,
    c: &DevBuf<f32>,
    f: f32,
) -> Result<(), KernelError> {
    if c.len == 0 {
        return Ok(());
    }
    let len = fits_u32("scaled buffer", c.len)?;
    unsafe {
        scale_kernel::launch_unchecked::<R>(
            client,
            super::grid(c.len.div_ceil(256))?,
            CubeDim::new_1d(256),
            c.arg(),
            len,
            f,
        );
    }
    Ok(())
}
