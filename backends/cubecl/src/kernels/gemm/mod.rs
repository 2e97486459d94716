//! Tiled f32 GEMM: `C = alpha op(A) op(B) + beta C`, row-major, with transpose flags, and two
//! skinny kernels for the router's products with an `E`-wide output (`E <= 8`): `Z = X R`
//! (reduction along rows of `X`) and `dR = X^T dZ` (reduction over tokens, split when the columns
//! alone give few cubes), which read `X` once, coalesced, instead of through 64-wide tiles.
//!
//! Most products go to `cubek-matmul` 0.2.0 (`cubek.rs`, f32 unit routines; [`gemm_path`] says
//! which path runs where, with the measurements). The own tiled kernel stays as the fallback
//! when cubek refuses a product: a classic shared-memory kernel, 64 x 64 output tiles, 16-deep K
//! slices, 256 threads each owning a 4 x 4 strided micro-tile. Each output is accumulated in K
//! order, like the reference triple loop. Large-K, small-output products split K over cubes into
//! a workspace that a second pass sums in a fixed order, so results stay deterministic.
//!
//! cubek 0.2 has no autotune of its own (burn-cubecl 0.21 keeps its tuner in `kernel/matmul/tune`,
//! on cubecl's `LocalTuner`). By default the routine is chosen by shape ([`gemm_path`]): a tuner
//! picks by timing at run time, so the summation order (and the last bits of every product)
//! could differ from run to run and between ranks, against this crate's run-to-run
//! determinism. [`GemmTuner`] (`tune.rs`, `CubeclBackend::with_gemm_autotune`) is the opt-in.

mod cubek;
mod skinny;
mod tune;

use cubecl::prelude::*;

use super::util::fits_u32;
use super::{check_len2, element_index, DevBuf, KernelError, Launch, MAX_GRID_DIM};

pub use cubek::CubekStrategy;
pub use skinny::SKINNY_MAX_N;
pub(crate) use skinny::{sum_accumulators, SKINNY_MIN_DIM, SK_LANES, SK_ROWS};
pub use tune::{candidates, GemmShape, GemmTuner};

/// Least inner dimension for which [`gemm`] takes cubek's double-buffered routine.
pub const CUBEK_DOUBLE_MIN_K: usize = 256;
/// Widest output for which [`gemm`] takes cubek's double-buffered routine.
pub const CUBEK_DOUBLE_MAX_N: usize = 32;

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

const BM: usize = 64;
const BN: usize = 64;
const BK: usize = 16;
const TS: usize = 16; // threads per side
const MT: usize = 4; // micro-tile side
/// Row stride of the staged tiles: one float of padding, so the K-major stores of untransposed
/// `A` and transposed `B` (16 threads, one per K index) hit 16 different banks.
const SA: usize = BM + 1;
const SB: usize = BN + 1;

/// The run-time scalars of a product, shared by its kernels (each reads those it needs).
#[derive(CubeLaunch, CubeType)]
struct GemmScalars {
    /// Rows of `C`.
    m: u32,
    /// Columns of `C`.
    n: u32,
    /// Inner dimension.
    k: u32,
    /// K per split (all of K without a split).
    k_chunk: u32,
    /// Product scale.
    alpha: f32,
    /// Scale of the old `C`.
    beta: f32,
}

#[cube(launch_unchecked)]
fn gemm_kernel(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    sc: &GemmScalars,
    #[comptime] trans_a: bool,
    #[comptime] trans_b: bool,
    #[comptime] beta_zero: bool,
    #[comptime] split: bool,
) {
    let m = sc.m as usize;
    let n = sc.n as usize;
    let k = sc.k as usize;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = ty * TS + tx;
    let row0 = CUBE_POS_Y as usize * BM;
    let col0 = CUBE_POS_X as usize * BN;
    // Split-K: cube z handles K range [k_begin, k_end) and writes slice z of the workspace.
    let k_begin = CUBE_POS_Z as usize * sc.k_chunk as usize;
    let mut k_end = k_begin + sc.k_chunk as usize;
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
                    store(c, i * n + j, acc[r * MT + q], sc.alpha, sc.beta, beta_zero);
                }
            }
        }
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

/// Which kernel runs a product (see [`gemm_path`] for the default choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmPath {
    /// The own skinny kernels (`n <= SKINNY_MAX_N`, not both operands transposed).
    Skinny,
    /// The own 64 x 64 shared-memory tiled kernel (with split-K for small outputs).
    Tiled,
    /// `cubek-matmul` with the given routine, and the own alpha/beta epilogue.
    Cubek(CubekStrategy),
}

/// Whether the skinny kernels can run `g` at all (whatever its speed).
fn skinny_fits(g: &GemmDims) -> bool {
    g.n <= SKINNY_MAX_N && !(g.trans_a && g.trans_b)
}

/// The path [`gemm`] takes for `g`. Measured with `examples/bench_gemm.rs` on lavapipe (a CPU
/// rasteriser on a 2-vCPU VM: its timings say little about a GPU; ratios in the README):
///
/// - **Skinny** for an output at most `SKINNY_MAX_N = 8` wide with a long inner dimension
///   (`k >= 64`) and at most one transpose: the router's `Z = X R`, `dR = X^T dZ` and the Gram
///   `R^T R` at `E <= 8`. `X^T dZ` / `R^T R` (`skinny_tn`, split over `k`) take any `m`;
///   `X R` (`skinny_nn`, 8 rows a cube) wants `m >= 64`. On lavapipe at `E = 8`, `D = N = 4096`:
///   `X R` 0.79-1.10x cubek's (`DoubleUnit`) time, `X^T dZ` 0.87-0.93x, `R^T R` 0.33-0.38x
///   (two runs; 0.06-0.08x the own tiled kernel's);
///   on an H200 the skinny kernels were 4-5x faster than the own tiles (see `skinny.rs`);
///   cubek there is unmeasured.
/// - **cubek** (f32 unit routines) for every other product: `DoubleUnit` for narrow outputs
///   with a long inner dimension (`n <= 32`, `k >= 256`: `X R`, `X^T dZ`, `R^T R` at `E = 32`;
///   two runs, 0.57-0.93x `SimpleUnit`'s time in 10 of 12 products, 1.27x and 1.0x in the
///   others), `SimpleUnit` for the rest (`dX = dZ R^T`, `k = E`: 0.70-0.87x `DoubleUnit`'s time;
///   all five products at `E = 256`: 0.61-0.92x; small products: 0.5x at 64^3, noisy below).
///   Against the own tiled kernel cubek took 0.11-0.67x its time on every router product on
///   lavapipe (two runs); on small products (1^3 to 128^3, under 7 ms) 0.32-1.27x, no
///   consistent winner, so they stay on cubek too (one path). On CUDA the default stays on
///   these f32 routines: cubek's tensor-core routines ([`CubekStrategy::Accelerated`]) stage f32
///   as tf32.
/// - **Tiled** (own): only the fallback when cubek refuses a product at setup (nothing enqueued).
pub fn gemm_path(g: &GemmDims) -> GemmPath {
    let long_k = g.k >= SKINNY_MIN_DIM;
    if skinny_fits(g) && long_k && (g.trans_a || g.m >= SKINNY_MIN_DIM) {
        GemmPath::Skinny
    } else if g.n <= CUBEK_DOUBLE_MAX_N && g.k >= CUBEK_DOUBLE_MIN_K {
        GemmPath::Cubek(CubekStrategy::DoubleUnit)
    } else {
        GemmPath::Cubek(CubekStrategy::SimpleUnit)
    }
}

/// Enqueues `C = alpha op(A) op(B) + beta C` on the path [`gemm_path`] picks; a product cubek
/// refuses at setup (no routine for the device or shape: nothing was enqueued) falls back to the
/// own tiled kernel.
pub fn gemm<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
    c: &DevBuf<f32>,
) -> Result<(), KernelError> {
    let path = gemm_path(g);
    match gemm_with(client, g, path, a, b, c) {
        Err(KernelError::Unsupported(_)) if matches!(path, GemmPath::Cubek(_)) => {
            gemm_with(client, g, GemmPath::Tiled, a, b, c)
        }
        other => other,
    }
}

/// Enqueues `C = alpha op(A) op(B) + beta C` on `path`, without fallback (for tests and
/// benchmarks of each path).
///
/// # Errors
/// [`KernelError::Length`] for operands of the wrong length; [`KernelError::Unsupported`] for
/// sizes past `u32`, a skinny path for a product it cannot take, or a cubek setup error.
pub fn gemm_with<R: Runtime>(
    client: &ComputeClient<R>,
    g: &GemmDims,
    path: GemmPath,
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
            super::util::fill_zero(client, c)
        } else {
            scale(client, c, g.beta)
        };
    }
    fits_u32("GEMM m", g.m)?;
    fits_u32("GEMM n", g.n)?;
    fits_u32("GEMM k", g.k)?;
    fits_u32("GEMM operand A", a.len)?;
    fits_u32("GEMM operand B", b.len)?;
    let product = Product { client, g, a, b, c };
    match path {
        GemmPath::Skinny if !skinny_fits(g) => Err(KernelError::Unsupported(format!(
            "the skinny GEMM kernels take n <= {SKINNY_MAX_N} and at most one transpose: {g:?}"
        ))),
        GemmPath::Skinny if !g.trans_a => product.skinny_nn(),
        GemmPath::Skinny => product.skinny_tn(),
        GemmPath::Tiled => product.tiled(),
        GemmPath::Cubek(s) => product.cubek(s),
    }
}

/// A product whose sizes [`gemm`] has checked, and the launchers of its kernels.
struct Product<'a, R: Runtime> {
    client: &'a ComputeClient<R>,
    g: &'a GemmDims,
    a: &'a DevBuf<f32>,
    b: &'a DevBuf<f32>,
    c: &'a DevBuf<f32>,
}

impl<R: Runtime> Product<'_, R> {
    /// `cubes` along one grid dimension, refused past [`MAX_GRID_DIM`].
    fn grid_dim(&self, cubes: usize) -> Result<u32, KernelError> {
        if cubes > MAX_GRID_DIM {
            return Err(KernelError::Unsupported(format!(
                "GEMM of {} x {} exceeds the grid limit",
                self.g.m, self.g.n
            )));
        }
        Ok(cubes as u32)
    }

    /// The product's [`GemmScalars`], K in chunks of `k_chunk`.
    fn scalars(&self, k_chunk: u32) -> GemmScalarsLaunch<R> {
        let g = self.g;
        GemmScalarsLaunch::new(g.m as u32, g.n as u32, g.k as u32, k_chunk, g.alpha, g.beta)
    }

    /// [`gemm_kernel`] over 64 x 64 tiles, splitting K when the tiles are few.
    fn tiled(&self) -> Result<(), KernelError> {
        let g = self.g;
        let gx = self.grid_dim(g.n.div_ceil(BN))?;
        let gy = self.grid_dim(g.m.div_ceil(BM))?;
        let work = SplitWork::new(self, choose_splits(gx as usize * gy as usize, g.k), BK)?;
        let launch = Launch {
            cubes: CubeCount::Static(gx, gy, work.splits),
            dim: CubeDim::new_2d(TS as u32, TS as u32),
        };
        launch!(
            self.client,
            launch,
            gemm_kernel(
                self.a.arg(),
                self.b.arg(),
                work.target(self.c).arg(),
                self.scalars(work.chunk),
                g.trans_a,
                g.trans_b,
                g.beta == 0.0,
                work.is_split(),
            )
        );
        work.finish(self)
    }
}

/// Sums the split-K slices in slice order and applies alpha/beta.
#[cube(launch_unchecked)]
fn split_reduce_kernel(
    work: &Array<f32>,
    c: &mut Array<f32>,
    sc: &GemmScalars,
    #[comptime] beta_zero: bool,
) {
    let i = element_index();
    let len = sc.m as usize * sc.n as usize;
    if i < len {
        let splits = (sc.k as usize).div_ceil(sc.k_chunk as usize);
        let mut sum = 0.0f32;
        for z in 0..splits {
            sum += work[z * len + i];
        }
        store(c, i, sum, sc.alpha, sc.beta, beta_zero);
    }
}

/// The split-K workspace of a product: K in chunks of `chunk`, one `m x n` slice per chunk,
/// summed in slice order after; none (the kernel writes `C`) for one chunk.
struct SplitWork {
    splits: u32,
    chunk: u32,
    work: Option<DevBuf<f32>>,
}

impl SplitWork {
    /// About `splits` chunks of K, each a multiple of `align`.
    fn new<R: Runtime>(
        p: &Product<'_, R>,
        splits: usize,
        align: usize,
    ) -> Result<Self, KernelError> {
        let k = p.g.k;
        let chunk = k.div_ceil(splits).div_ceil(align) * align;
        let splits = k.div_ceil(chunk);
        let work = if splits > 1 {
            let w = DevBuf::<f32>::empty(p.client, splits * p.g.m * p.g.n);
            fits_u32("GEMM split workspace", w.len)?;
            Some(w)
        } else {
            None
        };
        Ok(Self {
            splits: splits as u32,
            chunk: chunk as u32,
            work,
        })
    }
    fn is_split(&self) -> bool {
        self.work.is_some()
    }
    /// Where the kernel writes: the workspace, or `C` itself.
    fn target<'a>(&'a self, c: &'a DevBuf<f32>) -> &'a DevBuf<f32> {
        self.work.as_ref().unwrap_or(c)
    }
    /// `C = alpha (sum of the slices, in slice order) + beta C` for a split product.
    fn finish<R: Runtime>(self, p: &Product<'_, R>) -> Result<(), KernelError> {
        let Some(work) = &self.work else {
            return Ok(());
        };
        let g = p.g;
        let Some((launch, _)) = Launch::per_element("GEMM output", g.m * g.n)? else {
            return Ok(());
        };
        launch!(
            p.client,
            launch,
            split_reduce_kernel(work.arg(), p.c.arg(), p.scalars(self.chunk), g.beta == 0.0)
        );
        Ok(())
    }
}

#[cube(launch_unchecked)]
fn scale_kernel(c: &mut Array<f32>, len: u32, f: f32) {
    let i = element_index();
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
    if let Some((launch, len)) = Launch::per_element("scaled buffer", c.len)? {
        launch!(client, launch, scale_kernel(c.arg(), len, f));
    }
    Ok(())
}
