//! Memory primitives for backends whose buffers are host `Vec`s (the reference, faer, and any
//! user backend on plain memory): [`host_vec_memory!`](crate::host_vec_memory) fills in
//! [`crate::Memory`] from the functions here.

use crate::error::{Result, SimbalError};
use crate::shape::check_len;
#[doc(hidden)]
pub use alloc::vec::Vec;

/// A vector of `len` default values; a length the allocator refuses is an error, not an abort.
///
/// # Errors
/// [`SimbalError::Backend`] when the allocator refuses the length.
pub fn zeros<E: Copy + Default>(len: usize) -> Result<Vec<E>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| SimbalError::Backend {
        message: alloc::format!("cannot allocate a buffer of {len} elements"),
    })?;
    v.resize(len, E::default());
    Ok(v)
}

/// A copy of `host` in a new vector.
///
/// # Errors
/// [`SimbalError::Backend`] when the allocator refuses the length.
pub fn upload<E: Copy + Default>(host: &[E]) -> Result<Vec<E>> {
    let mut v = zeros(host.len())?;
    v.copy_from_slice(host);
    Ok(v)
}

/// Copies `src` into `dst`; their lengths must match (`what` names the target in the error).
///
/// # Errors
/// [`SimbalError::LengthMismatch`] when the lengths differ.
pub fn copy<E: Copy>(what: &'static str, src: &[E], dst: &mut [E]) -> Result<()> {
    check_len(what, src.len(), dst.len())?;
    dst.copy_from_slice(src);
    Ok(())
}

/// Implements the buffer types, every memory primitive and the host views of
/// [`crate::Memory`] for host memory: `Buf = Vec<$t>`, `View = [$t]`, `IdxBuf = Vec<u32>`,
/// `IdxView = [u32]`. Use it inside the `impl Memory` block, beside `name`.
///
/// ```
/// use simbal_core::{host_vec_memory, Backend, Checked, GemmArgs, Memory, Result};
/// /// A backend on plain memory whose only own code is its GEMM.
/// struct Mine;
/// impl Memory for Mine {
///     host_vec_memory!(f64);
///     fn name(&self) -> String { "mine".into() }
/// }
/// impl Backend for Mine {
///     fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
///         let a = a.into_inner(); // lengths already checked by core
///         simbal_core::gemm::gemm_reference(&a.gemm, a.a, a.b, a.c);
///         Ok(())
///     }
/// }
/// let x = Mine.upload(&[1.0, 2.0])?;
/// assert_eq!(Mine.host(&x), Some(&[1.0, 2.0][..]));
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
#[macro_export]
macro_rules! host_vec_memory {
    ($t:ty) => {
        type Elem = $t;
        type Buf = $crate::host::Vec<$t>;
        type View = [$t];
        fn zeros(&self, len: usize) -> $crate::Result<$crate::host::Vec<$t>> {
            $crate::host::zeros(len)
        }
        fn upload(&self, host: &[$t]) -> $crate::Result<$crate::host::Vec<$t>> {
            $crate::host::upload(host)
        }
        fn download(&self, buf: &[$t], host: &mut [$t]) -> $crate::Result<()> {
            $crate::host::copy("download target", buf, host)
        }
        fn write(&self, buf: &mut [$t], host: &[$t]) -> $crate::Result<()> {
            $crate::host::copy("write source", host, buf)
        }
        fn len(&self, buf: &[$t]) -> usize {
            buf.len()
        }
        fn host<'a>(&self, buf: &'a [$t]) -> Option<&'a [$t]> {
            Some(buf)
        }
        fn host_mut<'a>(&self, buf: &'a mut [$t]) -> Option<&'a mut [$t]> {
            Some(buf)
        }
        $crate::host_idx_memory!();
        $crate::host_values!($t);
    };
}

/// The scalar results of [`host_vec_memory!`](crate::host_vec_memory) for any memory whose
/// values are plain elements (`Value = $t`, reads are copies): for a backend whose element
/// buffers live elsewhere but whose scalar results are host values (the dfdx backend).
#[macro_export]
macro_rules! host_values {
    ($t:ty) => {
        type Value = $t;
        fn value(&self, v: $t) -> $crate::Result<$t> {
            Ok(v)
        }
        fn read_values(&self, values: &[&$t], out: &mut [$t]) -> $crate::Result<()> {
            $crate::shape::check_len("values", values.len(), out.len())?;
            for (o, v) in out.iter_mut().zip(values) {
                *o = **v;
            }
            Ok(())
        }
    };
}

/// The index half of [`host_vec_memory!`](crate::host_vec_memory): `IdxBuf = Vec<u32>`,
/// `IdxView = [u32]` and their primitives and host views, for a backend whose element buffers
/// live elsewhere but whose index buffers are host memory (the dfdx backend).
#[macro_export]
macro_rules! host_idx_memory {
    () => {
        type IdxBuf = $crate::host::Vec<u32>;
        type IdxView = [u32];
        fn idx_zeros(&self, len: usize) -> $crate::Result<$crate::host::Vec<u32>> {
            $crate::host::zeros(len)
        }
        fn idx_upload(&self, host: &[u32]) -> $crate::Result<$crate::host::Vec<u32>> {
            $crate::host::upload(host)
        }
        fn idx_download(&self, buf: &[u32], host: &mut [u32]) -> $crate::Result<()> {
            $crate::host::copy("download target", buf, host)
        }
        fn idx_write(&self, buf: &mut [u32], host: &[u32]) -> $crate::Result<()> {
            $crate::host::copy("write source", host, buf)
        }
        fn idx_len(&self, buf: &[u32]) -> usize {
            buf.len()
        }
        fn idx_host<'a>(&self, buf: &'a [u32]) -> Option<&'a [u32]> {
            Some(buf)
        }
        fn idx_host_mut<'a>(&self, buf: &'a mut [u32]) -> Option<&'a mut [u32]> {
            Some(buf)
        }
    };
}
