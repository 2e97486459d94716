//! Host staging for the kernel defaults: a buffer that lives in host memory is lent as a slice
//! (zero copies); any other buffer is downloaded, computed on by the reference kernels and
//! written back. Device backends override the kernels they want to keep on the device.

use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Deref;

/// Access to one kind of buffer of a backend (elements or indices).
pub(crate) trait Kind<M: Memory + ?Sized> {
    type E: Copy + Default;
    type View: ?Sized;
    fn len(m: &M, x: &Self::View) -> usize;
    fn host<'a>(m: &M, x: &'a Self::View) -> Option<&'a [Self::E]>;
    fn host_mut<'a>(m: &M, x: &'a mut Self::View) -> Option<&'a mut [Self::E]>;
    fn download(m: &M, x: &Self::View, out: &mut [Self::E]) -> Result<()>;
    fn write(m: &M, x: &mut Self::View, data: &[Self::E]) -> Result<()>;
}

/// Element buffers.
pub(crate) struct Elems;
/// Index buffers.
pub(crate) struct Idxs;

impl<M: Memory + ?Sized> Kind<M> for Elems {
    type E = M::Elem;
    type View = M::View;
    fn len(m: &M, x: &M::View) -> usize {
        m.len(x)
    }
    fn host<'a>(m: &M, x: &'a M::View) -> Option<&'a [M::Elem]> {
        m.host(x)
    }
    fn host_mut<'a>(m: &M, x: &'a mut M::View) -> Option<&'a mut [M::Elem]> {
        m.host_mut(x)
    }
    fn download(m: &M, x: &M::View, out: &mut [M::Elem]) -> Result<()> {
        m.download(x, out)
    }
    fn write(m: &M, x: &mut M::View, data: &[M::Elem]) -> Result<()> {
        m.write(x, data)
    }
}

impl<M: Memory + ?Sized> Kind<M> for Idxs {
    type E = u32;
    type View = M::IdxView;
    fn len(m: &M, x: &M::IdxView) -> usize {
        m.idx_len(x)
    }
    fn host<'a>(m: &M, x: &'a M::IdxView) -> Option<&'a [u32]> {
        m.idx_host(x)
    }
    fn host_mut<'a>(m: &M, x: &'a mut M::IdxView) -> Option<&'a mut [u32]> {
        m.idx_host_mut(x)
    }
    fn download(m: &M, x: &M::IdxView, out: &mut [u32]) -> Result<()> {
        m.idx_download(x, out)
    }
    fn write(m: &M, x: &mut M::IdxView, data: &[u32]) -> Result<()> {
        m.idx_write(x, data)
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
pub(crate) fn stage_in<'a, M: Memory + ?Sized, K: Kind<M>>(
    m: &M,
    x: &'a K::View,
) -> Result<In<'a, K::E>> {
    if let Some(s) = K::host(m, x) {
        return Ok(In::Host(s));
    }
    let mut v = vec![K::E::default(); K::len(m, x)];
    K::download(m, x, &mut v)?;
    Ok(In::Staged(v))
}

/// Reads an element buffer on the host.
pub(crate) fn stage_elems_in<'a, M: Memory + ?Sized>(
    m: &M,
    x: &'a M::View,
) -> Result<In<'a, M::Elem>> {
    stage_in::<M, Elems>(m, x)
}

/// Reads an index buffer on the host.
pub(crate) fn stage_idx_in<'a, M: Memory + ?Sized>(
    m: &M,
    x: &'a M::IdxView,
) -> Result<In<'a, u32>> {
    stage_in::<M, Idxs>(m, x)
}

/// A buffer written on the host: borrowed, or staged and written back by [`Out::finish`].
pub(crate) enum Out<'a, M: Memory + ?Sized, K: Kind<M>> {
    Host(&'a mut [K::E]),
    Staged(&'a mut K::View, Vec<K::E>),
}

impl<M: Memory + ?Sized, K: Kind<M>> Out<'_, M, K> {
    pub(crate) fn slice(&mut self) -> &mut [K::E] {
        match self {
            Out::Host(s) => s,
            Out::Staged(_, v) => v,
        }
    }
    /// Writes a staged buffer back.
    pub(crate) fn finish(self, m: &M) -> Result<()> {
        match self {
            Out::Host(_) => Ok(()),
            Out::Staged(x, v) => K::write(m, x, &v),
        }
    }
}

/// Opens `x` for writing on the host; `load` downloads its current contents first.
pub(crate) fn stage_out<'a, M: Memory + ?Sized, K: Kind<M>>(
    m: &M,
    x: &'a mut K::View,
    load: bool,
) -> Result<Out<'a, M, K>> {
    // Asked through the shared view first: a mutable borrow returned from inside an `if let`
    // would hold `x` for the rest of the function.
    if K::host(m, x).is_some() {
        return K::host_mut(m, x)
            .map(Out::Host)
            .ok_or_else(|| SimbalError::Backend {
                message: alloc::string::String::from(
                    "backend lends a host view of a buffer but no mutable one",
                ),
            });
    }
    let mut v = vec![K::E::default(); K::len(m, x)];
    if load {
        K::download(m, x, &mut v)?;
    }
    Ok(Out::Staged(x, v))
}
