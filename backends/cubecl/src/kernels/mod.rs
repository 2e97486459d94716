//! The cubecl kernels of the simbal GPU backend (f32), one module per kernel family, each with
//! host launchers that take device buffers ([`DevBuf`]) and enqueue work on a [`ComputeClient`].
//!
//! Launchers only enqueue: errors of the device (out of memory, a lost device) surface at the next
//! read or [`ComputeClient::flush`]. Launchers check the sizes they depend on and return
//! [`KernelError`] instead of panicking.
//!
//! # `unsafe`
//! cubecl 0.10 passes buffers to kernels only through `unsafe` constructors, and launches without
//! bounds checks through `unsafe` `launch_unchecked`. Every kernel here guards each global index
//! against the lengths its launcher checked, so the launches are sound as long as [`DevBuf::len`]
//! is true; `unsafe` is allowed in this module tree only.
#![allow(unsafe_code)]

use core::marker::PhantomData;

use cubecl::prelude::*;
use cubecl::server::Handle;

pub mod dispatch;
pub mod gemm;
pub mod lbl;
pub mod reduce;
pub mod router_backward;
pub mod router_forward;
pub mod simbal;
pub mod util;

/// A typed device buffer: a cubecl handle and its length in elements.
#[derive(Debug)]
pub struct DevBuf<T> {
    /// The cubecl memory handle.
    pub handle: Handle,
    /// Length in elements.
    pub len: usize,
    /// For index buffers: an exclusive upper bound on every element, when the kernel that wrote
    /// them guarantees one (lets consumers skip range checks). `None` when unknown.
    pub bound: Option<u32>,
    _t: PhantomData<T>,
}

impl<T> Clone for DevBuf<T> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            len: self.len,
            bound: self.bound,
            _t: PhantomData,
        }
    }
}

impl<T: CubeElement> DevBuf<T> {
    /// Wraps a handle holding `len` elements of `T`.
    pub fn from_handle(handle: Handle, len: usize) -> Self {
        Self {
            handle,
            len,
            bound: None,
            _t: PhantomData,
        }
    }

    /// Uploads `host`. Empty slices get a 1-element allocation (cubecl rejects empty buffers),
    /// still reported as length 0.
    pub fn upload<R: Runtime>(client: &ComputeClient<R>, host: &[T]) -> Self {
        let handle = if host.is_empty() {
            client.empty(core::mem::size_of::<T>().max(4))
        } else {
            client.create_from_slice(T::as_bytes(host))
        };
        Self::from_handle(handle, host.len())
    }

    /// Allocates `len` elements, uninitialised.
    pub fn empty<R: Runtime>(client: &ComputeClient<R>, len: usize) -> Self {
        let handle = client.empty(len.max(1) * core::mem::size_of::<T>());
        Self::from_handle(handle, len)
    }

    /// Reads the buffer back to the host (blocks until the queued work is done).
    pub fn read<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Vec<T>, KernelError> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        // A failed launch (e.g. a shader that does not compile) is only reported here.
        client
            .flush()
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let bytes = client
            .read_one(self.handle.clone())
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        Ok(T::from_bytes(&bytes)[..self.len].to_vec())
    }

    /// The buffer as a kernel argument, of its real length (at least 1).
    pub fn arg<R: Runtime>(&self) -> ArrayArg<R> {
        // SAFETY: the handle was allocated with at least `max(len, 1)` elements of `T`.
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.len.max(1)) }
    }
}

/// What a launcher can report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer does not have the length the shapes require.
    Length {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// A shape or configuration this kernel does not support.
    Unsupported(String),
    /// The device reported an error.
    Device(String),
}

impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KernelError::Length {
                what,
                expected,
                actual,
            } => write!(f, "{what}: expected length {expected}, got {actual}"),
            KernelError::Unsupported(m) => write!(f, "unsupported by the cubecl kernels: {m}"),
            KernelError::Device(m) => write!(f, "device error: {m}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// Checks a buffer length.
pub fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    }
}

/// Checks a buffer length against `a * b`; an overflowing product is reported as a mismatch
/// with expected length `usize::MAX`.
pub fn check_len2(
    what: &'static str,
    a: usize,
    b: usize,
    actual: usize,
) -> Result<(), KernelError> {
    check_len(what, a.saturating_mul(b), actual)
}

/// Largest cube count per grid dimension we use (the WebGPU minimum limit).
pub const MAX_GRID_DIM: usize = 65535;

/// A grid of at least `cubes` cubes, laid out in 2D when one dimension is not enough.
/// Kernels recover the linear cube id with [`linear_cube()`] and skip ids `>= cubes`.
pub fn grid(cubes: usize) -> Result<CubeCount, KernelError> {
    let cubes = cubes.max(1);
    if cubes <= MAX_GRID_DIM {
        return Ok(CubeCount::Static(cubes as u32, 1, 1));
    }
    let y = cubes.div_ceil(MAX_GRID_DIM);
    if y > MAX_GRID_DIM {
        return Err(KernelError::Unsupported(format!(
            "{cubes} cubes exceed the grid limit"
        )));
    }
    Ok(CubeCount::Static(MAX_GRID_DIM as u32, y as u32, 1))
}

/// The linear cube id of a grid made by [`grid`].
#[cube]
pub fn linear_cube() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// `u32::MAX`, as the "none" index sentinel in kernels.
pub const NONE: u32 = u32::MAX;
