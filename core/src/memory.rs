//! The [`Memory`] trait: where a backend keeps its buffers and how data gets in and out. It is
//! everything the host staging of the kernel defaults needs (burn's split of `BackendTypes` from
//! the op traits); the kernel trait [`crate::Backend`] builds on it.
//!
//! Each buffer kind (elements, indices) has an owned type (`Buf`, `IdxBuf`: what
//! [`Memory::zeros`] returns and a workspace keeps) and a borrowed type (`View`, `IdxView`: what
//! every kernel and every user-facing call takes). Host backends use `Vec<T>` and `[T]`, so their
//! users pass and receive plain slices; device backends use one handle type for both.

use crate::error::Result;
use crate::scalar::Scalar;
use alloc::string::String;
use core::borrow::{Borrow, BorrowMut};

/// Buffers of a backend: allocation, transfer, length and (for host memory) slice views.
pub trait Memory {
    /// Element type.
    type Elem: Scalar;
    /// An owned buffer of `Elem`.
    type Buf: BorrowMut<Self::View>;
    /// A borrowed buffer of `Elem` (`[Elem]` for host backends).
    type View: ?Sized;
    /// An owned buffer of `u32` (indices, counts, flags).
    type IdxBuf: BorrowMut<Self::IdxView>;
    /// A borrowed buffer of `u32` (`[u32]` for host backends).
    type IdxView: ?Sized;
    /// A scalar result of a kernel (a loss value, a `max |.|`) as this memory holds it: the
    /// element itself for host memory; for a device, a handle that stays there until
    /// [`Memory::read_values`] reads every value a step produced in one transfer (one
    /// synchronisation per step instead of one per value).
    type Value: Send + Sync;

    /// Human-readable name, e.g. `"faer-f32"`.
    fn name(&self) -> String;

    // ---- element buffers ---------------------------------------------------------------------

    /// A buffer of `len` zeros.
    ///
    /// # Errors
    /// [`crate::SimbalError::Backend`] when the memory cannot be had.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::Backend`] when the memory cannot be had.
    fn upload(&self, host: &[Self::Elem]) -> Result<Self::Buf>;
    /// Copies `buf` into `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn download(&self, buf: &Self::View, host: &mut [Self::Elem]) -> Result<()>;
    /// Overwrites `buf` with `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn write(&self, buf: &mut Self::View, host: &[Self::Elem]) -> Result<()>;
    /// Length of `buf` in elements.
    fn len(&self, buf: &Self::View) -> usize;
    /// The buffer as a host slice, where it lives in host memory (zero-copy staging).
    fn host<'a>(&self, _buf: &'a Self::View) -> Option<&'a [Self::Elem]> {
        None
    }
    /// The buffer as a mutable host slice, where it lives in host memory.
    fn host_mut<'a>(&self, _buf: &'a mut Self::View) -> Option<&'a mut [Self::Elem]> {
        None
    }

    // ---- scalar results ----------------------------------------------------------------------

    /// A value holding `v` (what the host-staged kernel defaults return).
    ///
    /// # Errors
    /// A transfer failure.
    fn value(&self, v: Self::Elem) -> Result<Self::Value>;
    /// Reads `values` into `out` (same length), all in one transfer: for a device, the one
    /// wait for the work queued before them.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn read_values(&self, values: &[&Self::Value], out: &mut [Self::Elem]) -> Result<()>;
    /// Whether reading values waits for queued work (a device); `false` (the default) for
    /// memory whose values are plain elements. The router then settles its input checks at
    /// the pass's first read instead of in the forward, so that a step reads once.
    fn values_wait(&self) -> bool {
        false
    }
    /// Reads one value (a read of its own: prefer [`Memory::read_values`] for several).
    ///
    /// # Errors
    /// A transfer failure.
    fn read_value(&self, v: &Self::Value) -> Result<Self::Elem> {
        let mut out = [<Self::Elem as num_traits::Zero>::zero()];
        self.read_values(&[v], &mut out)?;
        Ok(out[0])
    }

    // ---- index buffers -----------------------------------------------------------------------

    /// An index buffer of `len` zeros.
    ///
    /// # Errors
    /// [`crate::SimbalError::Backend`] when the memory cannot be had.
    fn idx_zeros(&self, len: usize) -> Result<Self::IdxBuf>;
    /// An index buffer holding a copy of `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::Backend`] when the memory cannot be had.
    fn idx_upload(&self, host: &[u32]) -> Result<Self::IdxBuf>;
    /// Copies `buf` into `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn idx_download(&self, buf: &Self::IdxView, host: &mut [u32]) -> Result<()>;
    /// Overwrites `buf` with `host`.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn idx_write(&self, buf: &mut Self::IdxView, host: &[u32]) -> Result<()>;
    /// Length of `buf`.
    fn idx_len(&self, buf: &Self::IdxView) -> usize;
    /// The index buffer as a host slice, where it lives in host memory.
    fn idx_host<'a>(&self, _buf: &'a Self::IdxView) -> Option<&'a [u32]> {
        None
    }
    /// The index buffer as a mutable host slice, where it lives in host memory.
    fn idx_host_mut<'a>(&self, _buf: &'a mut Self::IdxView) -> Option<&'a mut [u32]> {
        None
    }
    /// Whether every entry of `buf` is below `bound` (the expert-index precondition of the
    /// kernels that read indices). The default reads the buffer on the host; a device backend
    /// may answer from what it knows of the buffer's origin or with a device reduction.
    ///
    /// # Errors
    /// A transfer failure.
    fn idx_all_below(&self, buf: &Self::IdxView, bound: u32) -> Result<bool> {
        if let Some(v) = self.idx_host(buf) {
            return Ok(v.iter().all(|&i| i < bound));
        }
        let mut v = alloc::vec![0u32; self.idx_len(buf)];
        self.idx_download(buf, &mut v)?;
        Ok(v.iter().all(|&i| i < bound))
    }

    // ---- copies ------------------------------------------------------------------------------

    /// Copies `src` into `dst` (same length). The default copies host slices directly and
    /// stages anything else through the host; a device backend may copy on the device.
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn copy(&self, src: &Self::View, dst: &mut Self::View) -> Result<()> {
        crate::shape::check_len("copy destination", self.len(src), self.len(dst))?;
        if let (Some(s), Some(d)) = (self.host(src), self.host_mut(dst)) {
            d.copy_from_slice(s);
            return Ok(());
        }
        let mut tmp = alloc::vec![<Self::Elem as num_traits::Zero>::zero(); self.len(src)];
        self.download(src, &mut tmp)?;
        self.write(dst, &tmp)
    }

    /// Copies index buffer `src` into `dst` (same length), as [`Memory::copy`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] when the lengths differ; a transfer failure.
    fn idx_copy(&self, src: &Self::IdxView, dst: &mut Self::IdxView) -> Result<()> {
        crate::shape::check_len("copy destination", self.idx_len(src), self.idx_len(dst))?;
        if let (Some(s), Some(d)) = (self.idx_host(src), self.idx_host_mut(dst)) {
            d.copy_from_slice(s);
            return Ok(());
        }
        let mut tmp = alloc::vec![0u32; self.idx_len(src)];
        self.idx_download(src, &mut tmp)?;
        self.idx_write(dst, &tmp)
    }
}

/// An owned element buffer as the view kernels take.
pub fn view<M: Memory + ?Sized>(buf: &M::Buf) -> &M::View {
    buf.borrow()
}
/// An owned element buffer as a mutable view.
pub fn view_mut<M: Memory + ?Sized>(buf: &mut M::Buf) -> &mut M::View {
    buf.borrow_mut()
}
/// An owned index buffer as the view kernels take.
pub fn idx_view<M: Memory + ?Sized>(buf: &M::IdxBuf) -> &M::IdxView {
    buf.borrow()
}
/// An owned index buffer as a mutable view.
pub fn idx_view_mut<M: Memory + ?Sized>(buf: &mut M::IdxBuf) -> &mut M::IdxView {
    buf.borrow_mut()
}
