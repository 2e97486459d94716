//! The `cubek-matmul` 0.2.0 path: `op(A) op(B)` through cubek's tiled matmul engine, with the
//! transposes passed as strides (no copy), f32 in, out and accumulators, and alpha/beta applied
//! by a small epilogue of our own (cubek computes `C = A B` only).
//!
//! cubek needs no `unsafe` from us: its `launch_ref` is safe, takes [`TensorBinding`]s (plain
//! handles, shapes and strides) and bounds-checks itself (`check_{m,n,k}_bounds` of its
//! blueprint, set from the shapes). The epilogue kernel launches through `launch!` like every
//! kernel of this tree.

use core::marker::PhantomData;

use cubecl::prelude::*;
use cubek_matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek_matmul::launch::{launch_ref, Strategy};
use cubek_matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek_matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek_matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek_std::InputBinding;

use super::Product;
use crate::kernels::{element_index, DevBuf, KernelError, Launch};

/// Which cubek routine a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CubekStrategy {
    /// `SimpleUnit`: each unit computes a register tile from one shared-memory stage, f32 FMA.
    SimpleUnit,
    /// `DoubleUnit`: as `SimpleUnit`, double-buffered stages.
    DoubleUnit,
    /// `SimpleCyclicCmma`: tensor cores (cubek's `Strategy::Auto` picks it where available).
    /// On f32 inputs cubek 0.2 stages them as **tf32** wherever the device supports tf32
    /// (`adjust_dtypes`, `definition/blueprint.rs`): CUDA tensor cores have no f32 mode, so
    /// this is *not* an f32 product (about 10 mantissa bits in the inputs, f32 accumulation).
    /// Opt-in only ([`super::gemm`] never picks it); refused at setup where the device has no
    /// tensor cores, as lavapipe.
    Accelerated,
}

impl CubekStrategy {
    fn strategy(self) -> Strategy {
        match self {
            CubekStrategy::SimpleUnit => {
                Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs {
                    tile_size: TileSizeSelection::MaxTileSize,
                }))
            }
            CubekStrategy::DoubleUnit => {
                Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
                    tile_size: TileSizeSelection::MaxTileSize,
                }))
            }
            CubekStrategy::Accelerated => Strategy::SimpleCyclicCmma(Default::default()),
        }
    }
}

/// A row-major `rows x cols` buffer (`transposed`: stored `cols x rows`, read through strides).
fn binding<R: Runtime>(
    buf: &DevBuf<f32>,
    rows: usize,
    cols: usize,
    transposed: bool,
) -> TensorBinding<R> {
    // A vector (one row or one column) is the same memory either way: pass it row-major.
    // cubek 0.2's `DoubleUnit` computed wrong values for a column-major `1 x n` operand
    // (`k = 1`, `B` transposed; seen on lavapipe), row-major strides avoid that.
    let strides = if transposed && rows > 1 && cols > 1 {
        [1, rows]
    } else {
        [cols, 1]
    };
    TensorBinding {
        handle: buf.handle.clone().binding(),
        strides: strides.into(),
        shape: [rows, cols].into(),
        runtime: PhantomData,
    }
}

fn f32_type() -> StorageType {
    f32::as_type_native_unchecked().storage_type()
}

fn setup_err(e: MatmulSetupError) -> KernelError {
    KernelError::Unsupported(format!("cubek-matmul: {e}"))
}

/// `c[i] = alpha t[i] + beta c[i]` (`beta != 0`: this epilogue is only used to add into `C`).
#[cube(launch_unchecked)]
fn axpby_kernel(t: &Array<f32>, c: &mut Array<f32>, len: u32, alpha: f32, beta: f32) {
    let i = element_index();
    if i < len as usize {
        c[i] = alpha * t[i] + beta * c[i];
    }
}

impl<R: Runtime> Product<'_, R> {
    /// `out = op(A) op(B)` by cubek.
    fn cubek_product(&self, s: CubekStrategy, out: &DevBuf<f32>) -> Result<(), KernelError> {
        let g = self.g;
        let lhs = InputBinding::new(binding(self.a, g.m, g.k, g.trans_a), f32_type());
        let rhs = InputBinding::new(binding(self.b, g.k, g.n, g.trans_b), f32_type());
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
            lhs: f32_type(),
            rhs: f32_type(),
            out: f32_type(),
        });
        // cubek enqueues its kernel itself (not through `launch!`): count it here.
        crate::counters::launched();
        launch_ref(
            &s.strategy(),
            self.client,
            lhs,
            rhs,
            binding(out, g.m, g.n, false),
            &mut dtypes,
        )
        .map_err(setup_err)
    }

    /// `C = alpha op(A) op(B) + beta C` by cubek and, where alpha/beta ask for it, an epilogue:
    /// - `alpha = 1, beta = 0`: cubek writes `C`, nothing else.
    /// - `beta = 0`, other alpha: cubek writes `C`, then one in-place scale pass (`m n` read and
    ///   written).
    /// - `beta != 0`: cubek writes an `m x n` temporary, then `C = alpha T + beta C` (one pass:
    ///   `2 m n` read, `m n` written). The temporary comes from cubecl's memory pool, which hands
    ///   back the same pooled page from the second call on: no device allocation on the steady
    ///   per-step path, but `4 m n` bytes of pool held while the product runs. The router
    ///   step's only such product is SimBal's gradient `R G` into `dR` (`D x E`).
    ///
    /// An error of cubek's setup (no routine for the device or shape) is returned before
    /// anything is enqueued, so the caller can fall back to the own kernels.
    pub(super) fn cubek(&self, s: CubekStrategy) -> Result<(), KernelError> {
        let g = self.g;
        if g.beta == 0.0 {
            self.cubek_product(s, self.c)?;
            if g.alpha != 1.0 {
                super::scale(self.client, self.c, g.alpha)?;
            }
            return Ok(());
        }
        let t = DevBuf::<f32>::empty(self.client, g.m * g.n);
        self.cubek_product(s, &t)?;
        if let Some((launch, len)) = Launch::per_element("GEMM output", g.m * g.n)? {
            // Bounds: `len = m n`, the length of `t` and (checked by `gemm_with`) of `C`.
            launch!(
                self.client,
                launch,
                axpby_kernel(t.arg(), self.c.arg(), len, g.alpha, g.beta)
            );
        }
        Ok(())
    }
}
