//! Memory primitives for backends whose buffers are host `Vec`s (the reference, faer, and any
//! user backend on plain memory): [`host_vec_memory!`](crate::host_vec_memory) fills in the
//! memory part of [`crate::Backend`] from the functions here.

use crate::error::{Result, SimbalError};
use crate::shape::check_len;
use alloc::vec::Vec;

/// A vector of `len` default values; a length the allocator refuses is an error, not an abort.
pub fn zeros<E: Copy + Default>(len: usize) -> Result<Vec<E>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| SimbalError::Backend {
        message: alloc::format!("cannot allocate a buffer of {len} elements"),
    })?;
    v.resize(len, E::default());
    Ok(v)
}

/// A copy of `host` in a new vector.
pub fn upload<E: Copy + Default>(host: &[E]) -> Result<Vec<E>> {
    let mut v = zeros(host.len())?;
    v.copy_from_slice(host);
    Ok(v)
}

/// Copies `src` into `dst`; their lengths must match (`what` names the target in the error).
pub fn copy<E: Copy>(what: &'static str, src: &[E], dst: &mut [E]) -> Result<()> {
    check_len(what, src.len(), dst.len())?;
    dst.copy_from_slice(src);
    Ok(())
}

/// Implements every memory primitive and host view of [`crate::Backend`] for
/// `Buf = Vec<$t>` and `IdxBuf = Vec<u32>`; use it inside the `impl Backend` block.
///
/// ```
/// use simbal_core::{check_gemm, host_vec_memory, Backend, Gemm, Result};
/// /// A backend on plain memory whose only own code is its GEMM.
/// struct Mine;
/// impl Backend for Mine {
///     type Elem = f64;
///     type Buf = Vec<f64>;
///     type IdxBuf = Vec<u32>;
///     fn name(&self) -> String { "mine".into() }
///     host_vec_memory!(f64);
///     fn gemm(&self, g: &Gemm, a: &Vec<f64>, b: &Vec<f64>, c: &mut Vec<f64>) -> Result<()> {
///         check_gemm(g, a.len(), b.len(), c.len())?;
///         simbal_core::ops::gemm::gemm_reference(g, a, b, c);
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
        fn zeros(&self, len: usize) -> $crate::Result<Vec<$t>> {
            $crate::host::zeros(len)
        }
        fn upload(&self, host: &[$t]) -> $crate::Result<Vec<$t>> {
            $crate::host::upload(host)
        }
        fn download(&self, buf: &Vec<$t>, host: &mut [$t]) -> $crate::Result<()> {
            $crate::host::copy("download target", buf, host)
        }
        fn write(&self, buf: &mut Vec<$t>, host: &[$t]) -> $crate::Result<()> {
            $crate::host::copy("write source", host, buf)
        }
        fn len(&self, buf: &Vec<$t>) -> usize {
            buf.len()
        }
        fn idx_zeros(&self, len: usize) -> $crate::Result<Vec<u32>> {
            $crate::host::zeros(len)
        }
        fn idx_upload(&self, host: &[u32]) -> $crate::Result<Vec<u32>> {
            $crate::host::upload(host)
        }
        fn idx_download(&self, buf: &Vec<u32>, host: &mut [u32]) -> $crate::Result<()> {
            $crate::host::copy("download target", buf, host)
        }
        fn idx_write(&self, buf: &mut Vec<u32>, host: &[u32]) -> $crate::Result<()> {
            $crate::host::copy("write source", host, buf)
        }
        fn idx_len(&self, buf: &Vec<u32>) -> usize {
            buf.len()
        }
        fn is_host(&self) -> bool {
            true
        }
        fn host<'a>(&self, buf: &'a Vec<$t>) -> Option<&'a [$t]> {
            Some(buf)
        }
        fn host_mut<'a>(&self, buf: &'a mut Vec<$t>) -> Option<&'a mut [$t]> {
            Some(buf)
        }
        fn idx_host<'a>(&self, buf: &'a Vec<u32>) -> Option<&'a [u32]> {
            Some(buf)
        }
        fn idx_host_mut<'a>(&self, buf: &'a mut Vec<u32>) -> Option<&'a mut [u32]> {
            Some(buf)
        }
    };
}
