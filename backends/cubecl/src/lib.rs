//! GPU backend for simbal: cubecl 0.10 kernels (f32) on wgpu and CUDA.
//!
//! [`CubeclBackend`] implements [`simbal_core::Memory`] with device buffers ([`DevBuf`], one
//! type for owned buffers and views) and [`simbal_core::Backend`] with every kernel overridden,
//! so a router step keeps its buffers on the device. Scalar results (loss values, `max |.|`
//! checks) stay there too, as one-element buffers ([`simbal_core::Memory::Value`]): the router
//! reads all of a step's values in one transfer at the end of its backward, so a whole
//! `forward + backward` step waits for the device once ([`counters`] counts the waits; a test
//! holds the bound). Otherwise the host is reached for the routing statistics (`E`-long
//! vectors, when asked for), a located error (the scan that says where a non-finite value is),
//! and what still runs on core's host rows (Sinkhorn selection, sqrt-softplus scores, a
//! token-masked LBL's per-group tokens).
//!
//! The kernels themselves, usable without the trait, are in [`kernels`].
//!
//! ```
//! # #[cfg(feature = "wgpu")] {
//! use simbal_core::{LossConfig, Memory, Router, RouterConfig};
//! use simbal_cubecl::CubeclBackend;
//! let Some(be) = CubeclBackend::<cubecl::wgpu::WgpuRuntime>::try_new(&Default::default()) else {
//!     return Ok(()); // no adapter on this machine
//! };
//! let (n, d, e, k) = (64, 32, 8, 2);
//! let x = be.upload(&vec![0.1; n * d])?;
//! let r = be.upload(&(0..d * e).map(|i| (i % 7) as f32 * 0.01).collect::<Vec<_>>())?;
//! let dw = be.upload(&vec![1.0; n * k])?;
//! let mut router = Router::new(be.clone(), RouterConfig::new(e, k))?;
//! let mut pass = router.forward(&x, &r, None)?;
//! assert_eq!(pass.stats()?.tokens, n as u64);
//! let grads = pass.backward(&dw, &LossConfig::simbal(), None)?;
//! let mut dx = vec![0.0; n * d];
//! be.download(grads.dx, &mut dx)?; // the gradients stay on the device until asked for
//! assert!(dx.iter().all(|v| v.is_finite()));
//! # }
//! # Ok::<(), simbal_core::SimbalError>(())
//! ```
#![warn(missing_docs)]

mod backend;
mod counters;
// `#[cube]` generates undocumented expansion items next to each (documented) kernel function.
#[allow(missing_docs)]
pub mod kernels;
mod memory;

use std::sync::Arc;
use std::time::Duration;

use cubecl::prelude::*;
use kernels::gemm::{GemmPath, GemmShape, GemmTuner};
use simbal_core::SimbalError;

pub use counters::{counters, Counters};
pub use kernels::{DevBuf, KernelError};

/// The cubecl backend on runtime `R` (f32).
pub struct CubeclBackend<R: Runtime> {
    client: ComputeClient<R>,
    /// The GEMM paths chosen by timing, when autotune is on (shared by clones).
    tuner: Option<Arc<GemmTuner>>,
}

impl<R: Runtime> Clone for CubeclBackend<R> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            tuner: self.tuner.clone(),
        }
    }
}

impl<R: Runtime> core::fmt::Debug for CubeclBackend<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CubeclBackend({})", R::name(&self.client))
    }
}

impl<R: Runtime> CubeclBackend<R> {
    /// A backend on `device` (panics inside cubecl when the device cannot be opened: use
    /// [`CubeclBackend::try_new`] to get `None` instead).
    pub fn new(device: &R::Device) -> Self {
        Self::from_client(R::client(device))
    }

    /// A backend on `device`, or `None` when the runtime finds no such device (no adapter, no
    /// driver).
    pub fn try_new(device: &R::Device) -> Option<Self> {
        let device = device.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || R::client(&device)))
            .ok()
            .map(Self::from_client)
    }

    /// A backend on an existing client.
    pub fn from_client(client: ComputeClient<R>) -> Self {
        Self {
            client,
            tuner: None,
        }
    }

    /// This backend with GEMM autotune on: the first product of each shape times every path
    /// that can take it (skinny, cubek `SimpleUnit` / `DoubleUnit`, own tiles; never tf32
    /// tensor cores) and later products of that shape run the fastest. Off by default: the
    /// choice depends on timing, so two processes may pick different kernels and their
    /// products differ in the last bits; and the first step of each shape waits for the
    /// device once per timed run. The fused logits + rows launch for `E <= 8` is kept either
    /// way. Clones share the choices.
    ///
    /// ```
    /// # #[cfg(feature = "wgpu")] {
    /// use simbal_cubecl::CubeclBackend;
    /// let Some(be) = CubeclBackend::<cubecl::wgpu::WgpuRuntime>::try_new(&Default::default()) else {
    ///     return;
    /// };
    /// let be = be.with_gemm_autotune();
    /// assert!(be.gemm_choices().is_empty()); // nothing multiplied yet
    /// # }
    /// ```
    pub fn with_gemm_autotune(mut self) -> Self {
        self.tuner = Some(Arc::new(GemmTuner::new()));
        self
    }

    /// The GEMM paths autotune has chosen so far (shape, path, best time); empty when autotune
    /// is off.
    pub fn gemm_choices(&self) -> Vec<(GemmShape, GemmPath, Duration)> {
        self.tuner.as_ref().map(|t| t.choices()).unwrap_or_default()
    }

    /// The cubecl client.
    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Waits for every queued kernel; reports a device error raised since the last sync.
    ///
    /// # Errors
    /// [`SimbalError::Backend`] with the device's error.
    pub fn sync(&self) -> simbal_core::Result<()> {
        counters::waited();
        cubecl::future::block_on(self.client.sync()).map_err(|e| backend_err(format!("{e:?}")))
    }

    /// Runs `enqueue` on a fresh one-element buffer: the kernels that produce a scalar write it
    /// on the device, where it stays as a [`simbal_core::Memory::Value`].
    fn value_of(
        &self,
        enqueue: impl FnOnce(&DevBuf<f32>) -> Result<(), KernelError>,
    ) -> simbal_core::Result<DevBuf<f32>> {
        let out = DevBuf::<f32>::empty(&self.client, 1);
        enqueue(&out).map_err(map_err)?;
        Ok(out)
    }

    /// The first element of a buffer that holds at least one.
    fn read_first<T: CubeElement>(&self, buf: &DevBuf<T>) -> simbal_core::Result<T> {
        buf.read(&self.client)
            .map_err(map_err)?
            .first()
            .copied()
            .ok_or_else(|| backend_err("a one-element result buffer read back empty".into()))
    }
}

fn backend_err(message: String) -> SimbalError {
    SimbalError::Backend { message }
}

/// Kernel errors as core errors: length errors keep their shape, the rest are backend errors.
fn map_err(e: KernelError) -> SimbalError {
    match e {
        KernelError::Length {
            what,
            expected,
            actual,
        } => SimbalError::LengthMismatch {
            what,
            expected,
            got: actual,
        },
        other => backend_err(other.to_string()),
    }
}
