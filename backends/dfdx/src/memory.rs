//! [`Memory`] for [`Dfdx`]: element buffers are dfdx [`Vector`]s (the owned buffer is its own
//! view), index buffers host `Vec<u32>` lent as `[u32]` (on every device, so core's index scans
//! and the staged index kernels read them in place).

use crate::backend::{host_vec, Dfdx, Vector};
use dfdx::shapes::{Dtype, HasShape};
use dfdx::tensor_ops::Device;
use simbal_core::shape::check_len;
use simbal_core::{host, Memory, Result, Scalar};

impl<E: Scalar + Dtype, D: Device<E>> Memory for Dfdx<E, D> {
    type Elem = E;
    type Buf = Vector<E, D>;
    type View = Vector<E, D>;
    type IdxBuf = Vec<u32>;
    type IdxView = [u32];

    fn name(&self) -> String {
        let dev = std::any::type_name::<D>();
        let dev = dev.rsplit("::").next().unwrap_or(dev).to_lowercase();
        format!("dfdx-{dev}-{}", E::NAME)
    }

    fn zeros(&self, len: usize) -> Result<Vector<E, D>> {
        crate::backend::dx(self.dev.try_zeros_like(&(len,)))
    }
    fn upload(&self, host: &[E]) -> Result<Vector<E, D>> {
        self.vector(host.to_vec())
    }
    fn download(&self, buf: &Vector<E, D>, host: &mut [E]) -> Result<()> {
        check_len("download target", buf.shape().0, host.len())?;
        // `as_vec` reads in logical order, so even a strided tensor handed in by a user is right.
        host.copy_from_slice(&host_vec(buf));
        Ok(())
    }
    fn write(&self, buf: &mut Vector<E, D>, host: &[E]) -> Result<()> {
        check_len("write source", buf.shape().0, host.len())?;
        *buf = self.vector(host.to_vec())?;
        Ok(())
    }
    fn len(&self, buf: &Vector<E, D>) -> usize {
        buf.shape().0
    }

    fn idx_zeros(&self, len: usize) -> Result<Vec<u32>> {
        host::zeros(len)
    }
    fn idx_upload(&self, src: &[u32]) -> Result<Vec<u32>> {
        host::upload(src)
    }
    fn idx_download(&self, buf: &[u32], dst: &mut [u32]) -> Result<()> {
        host::copy("download target", buf, dst)
    }
    fn idx_write(&self, buf: &mut [u32], src: &[u32]) -> Result<()> {
        host::copy("write source", src, buf)
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
}
