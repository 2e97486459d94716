//! Host staging for the default implementations of the [`Backend`] kernels: a host backend lends
//! its buffers as slices (zero copies); a device backend's buffers are downloaded, computed on by
//! the reference kernels and written back. Device backends override the kernels to stay on the
//! device.

use crate::backend::Backend;
use crate::error::{Result, SimbalError};
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Deref;

/// Access to one kind of buffer of a backend (elements or indices).
pub(crate) trait Kind<B: Backend + ?Sized> {
    type E: Copy + Default;
    type Buf;
    fn len(b: &B, x: &Self::Buf) -> usize;
    fn host<'a>(b: &B, x: &'a Self::Buf) -> Option<&'a [Self::E]>;
    fn host_mut<'a>(b: &B, x: &'a mut Self::Buf) -> Option<&'a mut [Self::E]>;
    fn download(b: &B, x: &Self::Buf, out: &mut [Self::E]) -> Result<()>;
    fn write(b: &B, x: &mut Self::Buf, data: &[Self::E]) -> Result<()>;
}

/// Element buffers.
pub(crate) struct Elems;
/// Index buffers.
pub(crate) struct Idxs;

impl<B: Backend + ?Sized> Kind<B> for Elems {
    type E = B::Elem;
    type Buf = B::Buf;
    fn len(b: &B, x: &B::Buf) -> usize {
        b.len(x)
    }
    fn host<'a>(b: &B, x: &'a B::Buf) -> Option<&'a [B::Elem]> {
        b.host(x)
    }
    fn host_mut<'a>(b: &B, x: &'a mut B::Buf) -> Option<&'a mut [B::Elem]> {
        b.host_mut(x)
    }
    fn download(b: &B, x: &B::Buf, out: &mut [B::Elem]) -> Result<()> {
        b.download(x, out)
    }
    fn write(b: &B, x: &mut B::Buf, data: &[B::Elem]) -> Result<()> {
        b.write(x, data)
    }
}

impl<B: Backend + ?Sized> Kind<B> for Idxs {
    type E = u32;
    type Buf = B::IdxBuf;
    fn len(b: &B, x: &B::IdxBuf) -> usize {
        b.idx_len(x)
    }
    fn host<'a>(b: &B, x: &'a B::IdxBuf) -> Option<&'a [u32]> {
        b.idx_host(x)
    }
    fn host_mut<'a>(b: &B, x: &'a mut B::IdxBuf) -> Option<&'a mut [u32]> {
        b.idx_host_mut(x)
    }
    fn download(b: &B, x: &B::IdxBuf, out: &mut [u32]) -> Result<()> {
        b.idx_download(x, out)
    }
    fn write(b: &B, x: &mut B::IdxBuf, data: &[u32]) -> Result<()> {
        b.idx_write(x, data)
    }
}

/// A buffer read on the host: borrowed or downloaded.
pub(crate) enum In<'a, E> {
    Host(&'a [E]),
    Staged(Vec<E>),
}

impl<E> Deref for In<'_, E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        match self {
            In::Host(s) => s,
            In::Staged(v) => v,
        }
    }
}

/// Reads `x` on the host.
pub(crate) fn stage_in<'a, B: Backend + ?Sized, K: Kind<B>>(
    b: &B,
    x: &'a K::Buf,
) -> Result<In<'a, K::E>> {
    if let Some(s) = K::host(b, x) {
        return Ok(In::Host(s));
    }
    let mut v = vec![K::E::default(); K::len(b, x)];
    K::download(b, x, &mut v)?;
    Ok(In::Staged(v))
}

/// A buffer written on the host: borrowed, or staged and written back by [`Out::finish`].
pub(crate) enum Out<'a, B: Backend + ?Sized, K: Kind<B>> {
    Host(&'a mut [K::E]),
    Staged(&'a mut K::Buf, Vec<K::E>),
}

impl<B: Backend + ?Sized, K: Kind<B>> Out<'_, B, K> {
    pub(crate) fn slice(&mut self) -> &mut [K::E] {
        match self {
            Out::Host(s) => s,
            Out::Staged(_, v) => v,
        }
    }
    /// Writes a staged buffer back to the device.
    pub(crate) fn finish(self, b: &B) -> Result<()> {
        match self {
            Out::Host(_) => Ok(()),
            Out::Staged(x, v) => K::write(b, x, &v),
        }
    }
}

/// Opens `x` for writing on the host; `load` downloads its current contents first.
pub(crate) fn stage_out<'a, B: Backend + ?Sized, K: Kind<B>>(
    b: &B,
    x: &'a mut K::Buf,
    load: bool,
) -> Result<Out<'a, B, K>> {
    if b.is_host() {
        return K::host_mut(b, x)
            .map(Out::Host)
            .ok_or_else(|| SimbalError::Backend {
                message: alloc::string::String::from(
                    "backend reports host buffers but lent no host slice",
                ),
            });
    }
    let mut v = vec![K::E::default(); K::len(b, x)];
    if load {
        K::download(b, x, &mut v)?;
    }
    Ok(Out::Staged(x, v))
}
