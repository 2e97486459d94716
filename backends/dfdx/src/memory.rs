//! [`Memory`] for [`Dfdx`]: element buffers are dfdx [`Vector`]s (the owned buffer is its own
//! view), index buffers host `Vec<u32>` lent as `[u32]` (on every device, so core's index scans
//! and the staged index kernels read them in place).

use crate::backend::{host_vec, Dfdx, Vector};
use dfdx::shapes::{Dtype, HasShape};
use dfdx::tensor_ops::Device;
use simbal_core::shape::check_len;
use simbal_core::{Memory, Result, Scalar};

impl<E: Scalar + Dtype, D: Device<E>> Memory for Dfdx<E, D> {
    type Elem = E;
    type Buf = Vector<E, D>;
    type View = Vector<E, D>;

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

    simbal_core::host_idx_memory!();
    simbal_core::host_values!(E);
}
