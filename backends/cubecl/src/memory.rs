//! [`simbal_core::Memory`] for [`CubeclBackend`]: device buffers ([`DevBuf`]) for elements and
//! indices alike, and the expert-index check answered on the device.

use cubecl::prelude::*;
use simbal_core::shape::check_len;
use simbal_core::{Memory, Result};

use crate::kernels::{reduce, util, DevBuf};
use crate::{backend_err, map_err, CubeclBackend};

impl<R: Runtime> CubeclBackend<R> {
    /// Refuses an allocation of `len` 4-byte elements larger than one device allocation may be
    /// (or than the kernels' `u32` indexing reaches).
    fn check_alloc(&self, len: usize) -> Result<()> {
        let max = self.client.properties().memory.max_page_size;
        let ok = len <= u32::MAX as usize && (len as u64).checked_mul(4).is_some_and(|b| b <= max);
        if ok {
            Ok(())
        } else {
            Err(backend_err(format!(
                "a buffer of {len} elements exceeds the device's largest allocation ({max} bytes)"
            )))
        }
    }

    /// `len` zeros (all-zero bits are 0 for both element types).
    fn zeros_of<T: CubeElement>(&self, len: usize) -> Result<DevBuf<T>> {
        self.check_alloc(len)?;
        let b = DevBuf::empty(&self.client, len);
        util::fill_zero(&self.client, &b).map_err(map_err)?;
        Ok(b)
    }

    fn upload_of<T: CubeElement>(&self, host: &[T]) -> Result<DevBuf<T>> {
        self.check_alloc(host.len())?;
        Ok(DevBuf::upload(&self.client, host))
    }

    fn download_of<T: CubeElement>(&self, buf: &DevBuf<T>, host: &mut [T]) -> Result<()> {
        check_len("download target", buf.len, host.len())?;
        host.copy_from_slice(&buf.read(&self.client).map_err(map_err)?);
        Ok(())
    }

    /// A new handle with `host` (the old one may still be read by queued kernels); whatever the
    /// buffer's writer guaranteed about its contents (`bound`) is gone.
    fn write_of<T: CubeElement>(&self, buf: &mut DevBuf<T>, host: &[T]) -> Result<()> {
        check_len("write source", buf.len, host.len())?;
        *buf = DevBuf::upload(&self.client, host);
        Ok(())
    }
}

/// The [`Memory`] methods of one element type (`f32` elements or `u32` indices), under the names
/// the trait gives them for that type, each forwarding to a generic helper above.
macro_rules! buffer_methods {
    ($t:ty: $zeros:ident, $upload:ident, $download:ident, $write:ident, $len:ident) => {
        fn $zeros(&self, len: usize) -> Result<DevBuf<$t>> {
            self.zeros_of(len)
        }
        fn $upload(&self, host: &[$t]) -> Result<DevBuf<$t>> {
            self.upload_of(host)
        }
        fn $download(&self, buf: &DevBuf<$t>, host: &mut [$t]) -> Result<()> {
            self.download_of(buf, host)
        }
        fn $write(&self, buf: &mut DevBuf<$t>, host: &[$t]) -> Result<()> {
            self.write_of(buf, host)
        }
        fn $len(&self, buf: &DevBuf<$t>) -> usize {
            buf.len
        }
    };
}

impl<R: Runtime> Memory for CubeclBackend<R> {
    type Elem = f32;
    type Buf = DevBuf<f32>;
    type View = DevBuf<f32>;
    type IdxBuf = DevBuf<u32>;
    type IdxView = DevBuf<u32>;
    /// A one-element buffer: a kernel's scalar result stays on the device until read.
    type Value = DevBuf<f32>;

    fn name(&self) -> String {
        format!("cubecl-{}-f32", R::name(&self.client))
    }

    buffer_methods!(f32: zeros, upload, download, write, len);

    fn value(&self, v: f32) -> Result<DevBuf<f32>> {
        Ok(DevBuf::upload(&self.client, &[v]))
    }

    /// One read of every value's first element: one wait for the device.
    fn read_values(&self, values: &[&DevBuf<f32>], out: &mut [f32]) -> Result<()> {
        check_len("values", values.len(), out.len())?;
        if values.is_empty() {
            return Ok(());
        }
        crate::counters::waited();
        // A failed launch (e.g. a shader that does not compile) is only reported here.
        self.client
            .flush()
            .map_err(|e| backend_err(format!("{e:?}")))?;
        let handles = values.iter().map(|v| v.handle.clone()).collect();
        let bytes = cubecl::reader::read_sync(self.client.read_async(handles))
            .map_err(|e| backend_err(format!("{e:?}")))?;
        for (o, b) in out.iter_mut().zip(&bytes) {
            *o = f32::from_bytes(b).first().copied().unwrap_or(f32::NAN);
        }
        Ok(())
    }

    fn values_wait(&self) -> bool {
        true
    }
    buffer_methods!(u32: idx_zeros, idx_upload, idx_download, idx_write, idx_len);

    /// Free for indices this backend's `route` wrote (their `bound` is `E`); otherwise one device
    /// reduction and a 4-byte read.
    fn idx_all_below(&self, buf: &DevBuf<u32>, bound: u32) -> Result<bool> {
        if buf.bound.is_some_and(|b| b <= bound) || buf.len == 0 {
            return Ok(true);
        }
        Ok(reduce::max_u32(&self.client, buf).map_err(map_err)? < bound)
    }
}
