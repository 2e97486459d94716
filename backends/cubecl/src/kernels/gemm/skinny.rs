//! The skinny kernels of products with an `E`-wide output (`E <= 8`): `Z = X R` and `dR = X^T dZ`,
//! reading `X` once, coalesced.

use cubecl::prelude::*;

use super::{store, GemmScalars, Product, SplitWork};
use crate::kernels::{linear_cube, KernelError, Launch};

/// Widest output the skinny kernels take (the router's `E`); wider outputs use the tiled kernel.
/// Measured on an H200: at `E = 8` the skinny kernels took `X R` from 0.66 to 0.16 ms and
/// `X^T dZ` from 0.46 to 0.09 ms (4096 x 4096); at `E = 32` they were slower than the tiles
/// (0.49 against 0.08 ms for 4096 x 768: 32 accumulators a thread and a 32-wide shared-memory
/// tree), so only `E <= 8` takes them. `9..=16` is unmeasured and stays on the tiles.
pub const SKINNY_MAX_N: usize = 8;
/// Least rows of the output and least inner dimension for the skinny kernels.
pub(crate) const SKINNY_MIN_DIM: usize = 64;
/// Threads of a skinny cube along the reduction (nn) or along the output rows (tn).
pub(crate) const SK_LANES: usize = 32;
/// Output rows (nn) or token lanes (tn) per skinny cube.
pub(crate) const SK_ROWS: usize = 8;

/// Fixed-order tree over `count` threads of their `n` accumulators each: thread `me` stores
/// `acc` at `s[base..base + n]`, and its partner `stride` threads on sits `stride * step` slots
/// further; the total ends in the slots of thread 0. All threads of the cube must call it.
#[cube]
pub(crate) fn sum_accumulators(
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
fn skinny_nn_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    sc: &GemmScalars,
    #[comptime] n: usize,
    #[comptime] trans_b: bool,
    #[comptime] beta_zero: bool,
) {
    let lane = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let row = linear_cube() * SK_ROWS + y;
    let m = sc.m as usize;
    let k = sc.k as usize;
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
            sc.alpha,
            sc.beta,
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
fn skinny_tn_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    sc: &GemmScalars,
    #[comptime] n: usize,
    #[comptime] beta_zero: bool,
    #[comptime] split: bool,
) {
    let lane = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let col = CUBE_POS_X as usize * SK_LANES + lane;
    let m = sc.m as usize;
    let k = sc.k as usize;
    let t_begin = CUBE_POS_Y as usize * sc.k_chunk as usize;
    let mut t_end = t_begin + sc.k_chunk as usize;
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
                store(c, o, v, sc.alpha, sc.beta, beta_zero);
            }
        }
    }
}

impl<R: Runtime> Product<'_, R> {
    /// [`skinny_nn_kernel`] over all rows.
    pub(super) fn skinny_nn(&self) -> Result<(), KernelError> {
        let g = self.g;
        let launch = Launch::rows(g.m, SK_LANES, SK_ROWS)?;
        launch!(
            self.client,
            launch,
            skinny_nn_kernel(
                self.a.arg(),
                self.b.arg(),
                self.c.arg(),
                self.scalars(g.k as u32),
                g.n,
                g.trans_b,
                g.beta == 0.0,
            )
        );
        Ok(())
    }

    /// [`skinny_tn_kernel`], splitting the tokens when the columns alone give few cubes.
    pub(super) fn skinny_tn(&self) -> Result<(), KernelError> {
        const TARGET_CUBES: usize = 512;
        const MIN_K_PER_SPLIT: usize = 256;
        let g = self.g;
        let gx = self.grid_dim(g.m.div_ceil(SK_LANES))?;
        let splits = TARGET_CUBES
            .div_ceil(gx as usize)
            .min(g.k / MIN_K_PER_SPLIT)
            .clamp(1, 64);
        let work = SplitWork::new(self, splits, 1)?;
        let launch = Launch {
            cubes: CubeCount::Static(gx, work.splits, 1),
            dim: CubeDim::new_2d(SK_LANES as u32, SK_ROWS as u32),
        };
        launch!(
            self.client,
            launch,
            skinny_tn_kernel(
                self.a.arg(),
                self.b.arg(),
                work.target(self.c).arg(),
                self.scalars(work.chunk),
                g.n,
                g.beta == 0.0,
                work.is_split(),
            )
        );
        work.finish(self)
    }
}
