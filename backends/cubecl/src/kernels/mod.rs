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
//! is true. `unsafe` is allowed in this module tree only, and written in two places: [`DevBuf::arg`]
//! and the `launch!` macro that every launcher enqueues its kernel with (on a [`Launch`]).
#![allow(unsafe_code)]

use core::marker::PhantomData;

use cubecl::prelude::*;
use cubecl::server::Handle;

/// `launch!(client, launch, kernel(args..))` enqueues the `#[cube(launch_unchecked)]` kernel
/// `kernel` with `args` on `client` over `launch` (a [`Launch`]): the one `unsafe` launch of the
/// kernel modules.
macro_rules! launch {
    ($client:expr, $launch:expr, $kernel:ident($($arg:expr),* $(,)?)) => {{
        let $crate::kernels::Launch { cubes, dim } = $launch;
        $crate::counters::launched();
        // SAFETY: every kernel guards each global index against the lengths its launcher
        // checked, and `DevBuf::arg` passes a buffer's real length (see the module docs).
        unsafe { $kernel::launch_unchecked($client, cubes, dim, $($arg),*) }
    }};
}

pub mod dispatch;
pub mod gemm;
pub mod groups;
pub mod lbl;
pub mod logits_route;
pub mod reduce;
pub mod router_backward;
pub mod router_forward;
pub mod scores;
pub mod select;
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
            crate::counters::uploaded();
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
        crate::counters::waited();
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

impl DevBuf<u32> {
    /// The same handle read as `f32`s: for a kernel that writes float bits through `u32`
    /// atomics (as [`reduce::max_abs_value`]).
    pub fn bits_as_f32(self) -> DevBuf<f32> {
        DevBuf::from_handle(self.handle, self.len)
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

/// Checks a buffer length (core's check, reported as a [`KernelError::Length`]).
pub fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    simbal_core::shape::check_len(what, expected, actual).map_err(|_| KernelError::Length {
        what,
        expected,
        actual,
    })
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

/// Refuses `k` of `e` experts that no token can pick: none of them, or more than `e`.
///
/// # Errors
/// [`KernelError::Unsupported`] for such a `k`.
pub fn check_top_k(e: usize, k: usize) -> Result<(), KernelError> {
    if e == 0 || k == 0 || k > e {
        return Err(KernelError::Unsupported(format!("k = {k} with E = {e}")));
    }
    Ok(())
}

/// Threads of a 1D cube: of the element-wise kernels and the cube-per-item passes.
pub const THREADS: u32 = 256;

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

/// The element of a thread of an element-wise kernel ([`Launch::per_element`]); the kernel skips
/// those past the buffer's end.
#[cube]
pub fn element_index() -> usize {
    linear_cube() * CUBE_DIM as usize + UNIT_POS as usize
}

/// Where a kernel runs: its grid and the shape of each cube.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The grid.
    pub cubes: CubeCount,
    /// Threads of each cube.
    pub dim: CubeDim,
}

impl Launch {
    /// `cubes` cubes of [`THREADS`] threads, on a [`grid`].
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] beyond the grid limit.
    pub fn cubes(cubes: usize) -> Result<Self, KernelError> {
        Self::cubes_2d(cubes, THREADS as usize, 1)
    }

    /// `cubes` cubes of `x * y` threads, on a [`grid`] (so kernels find their cube with
    /// [`linear_cube()`]).
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] beyond the grid limit.
    pub fn cubes_2d(cubes: usize, x: usize, y: usize) -> Result<Self, KernelError> {
        Ok(Self {
            cubes: grid(cubes)?,
            dim: CubeDim::new_2d(x as u32, y as u32),
        })
    }

    /// `n` rows, `rows` a cube (along y) and `lanes` threads a row (along x), on a [`grid`].
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] beyond the grid limit.
    pub fn rows(n: usize, lanes: usize, rows: usize) -> Result<Self, KernelError> {
        Self::cubes_2d(n.div_ceil(rows), lanes, rows)
    }

    /// One thread per element of a `len`-element buffer ([`element_index()`]), and `len` as the
    /// kernel's `u32` argument; `None` for an empty buffer (nothing to launch).
    ///
    /// # Errors
    /// [`KernelError::Unsupported`] when `len` (`what`'s length) exceeds `u32` or the grid.
    pub fn per_element(what: &'static str, len: usize) -> Result<Option<(Self, u32)>, KernelError> {
        let len32 = util::fits_u32(what, len)?;
        if len == 0 {
            return Ok(None);
        }
        Ok(Some((Self::cubes(len.div_ceil(THREADS as usize))?, len32)))
    }
}

/// `u32::MAX`, as the "none" index sentinel in kernels.
pub const NONE: u32 = u32::MAX;
