//! Reusable buffers for the router ops: allocated on the first call of a shape and reused by every
//! later call of the same shape, so a training step allocates nothing.

use crate::backend::Backend;
use crate::error::Result;
use alloc::vec;
use alloc::vec::Vec;

/// Shape of one routing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Tokens `N`.
    pub n: usize,
    /// Model width `D` (0 when routing from logits).
    pub d: usize,
    /// Experts `E`.
    pub e: usize,
    /// Experts per token `k`.
    pub k: usize,
}

/// Buffers of SimBal: the Gram matrix and, for ScaleFree, the normalised weight.
pub struct SimbalWorkspace<B: Backend> {
    pub(crate) d: usize,
    pub(crate) e: usize,
    pub(crate) gram: B::Buf,
    pub(crate) norms: B::Buf,
    pub(crate) rn: B::Buf,
    pub(crate) drn: B::Buf,
}

impl<B: Backend> SimbalWorkspace<B> {
    /// Buffers for a `D x E` router weight.
    pub fn new(backend: &B, d: usize, e: usize) -> Result<Self> {
        let de = crate::shape::product("router weight", d, e)?;
        Ok(Self {
            d,
            e,
            gram: backend.zeros(crate::shape::product("Gram matrix", e, e)?)?,
            norms: backend.zeros(e)?,
            rn: backend.zeros(de)?,
            drn: backend.zeros(de)?,
        })
    }

    /// Reallocates only when the shape changed.
    pub fn ensure(&mut self, backend: &B, d: usize, e: usize) -> Result<()> {
        if self.d != d || self.e != e {
            *self = Self::new(backend, d, e)?;
        }
        Ok(())
    }

    /// The Gram matrix's buffer: after a SimBal call it holds the multiplier `M` (`dL/dR = R M`).
    pub fn gram(&self) -> &B::Buf {
        &self.gram
    }
}

/// Every buffer of a router forward and backward pass.
pub struct Workspace<B: Backend> {
    pub(crate) shape: Shape,
    pub(crate) z: B::Buf,
    pub(crate) p: B::Buf,
    pub(crate) gates: B::Buf,
    pub(crate) idx: B::IdxBuf,
    pub(crate) dropped: B::IdxBuf,
    pub(crate) counts: B::IdxBuf,
    pub(crate) order: B::IdxBuf,
    pub(crate) offsets: B::IdxBuf,
    pub(crate) dz: B::Buf,
    pub(crate) dx: B::Buf,
    pub(crate) dr: B::Buf,
    /// LBL group buffers, sized for `groups` groups (grown on demand).
    pub(crate) groups: usize,
    pub(crate) group_sums: B::Buf,
    pub(crate) group_counts: B::IdxBuf,
    pub(crate) lbl_coef: B::Buf,
    pub(crate) host_sums: Vec<B::Elem>,
    pub(crate) host_coef: Vec<B::Elem>,
    /// Statistics buffers (`E`), apart from the LBL's so mixing both allocates nothing.
    pub(crate) stat_sums: B::Buf,
    pub(crate) host_stat_sums: Vec<B::Elem>,
    pub(crate) host_stat_counts: Vec<u32>,
    pub(crate) simbal: SimbalWorkspace<B>,
}

impl<B: Backend> Workspace<B> {
    /// Allocates every buffer for `shape` (`d = 0` routes from logits: no `dX`/`dR`).
    pub fn new(backend: &B, shape: Shape) -> Result<Self> {
        let Shape { n, d, e, k } = shape;
        let ne = crate::shape::product("logits", n, e)?;
        let nk = crate::shape::product("indices", n, k)?;
        let nd = crate::shape::product("tokens", n, d)?;
        let de = crate::shape::product("router weight", d, e)?;
        Ok(Self {
            shape,
            z: backend.zeros(ne)?,
            p: backend.zeros(ne)?,
            gates: backend.zeros(nk)?,
            idx: backend.idx_zeros(nk)?,
            dropped: backend.idx_zeros(nk)?,
            counts: backend.idx_zeros(e)?,
            order: backend.idx_zeros(nk)?,
            offsets: backend.idx_zeros(e + 1)?,
            dz: backend.zeros(ne)?,
            dx: backend.zeros(nd)?,
            dr: backend.zeros(de)?,
            groups: 1,
            group_sums: backend.zeros(e)?,
            group_counts: backend.idx_zeros(e)?,
            lbl_coef: backend.zeros(e)?,
            host_sums: vec![<B::Elem as num_traits::Zero>::zero(); e],
            host_coef: vec![<B::Elem as num_traits::Zero>::zero(); e],
            stat_sums: backend.zeros(e)?,
            host_stat_sums: vec![<B::Elem as num_traits::Zero>::zero(); e],
            host_stat_counts: vec![0; e],
            simbal: SimbalWorkspace::new(backend, d.max(1), e)?,
        })
    }

    /// The shape the buffers are sized for.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Sizes the LBL group buffers for `groups` groups.
    pub(crate) fn ensure_groups(&mut self, backend: &B, groups: usize) -> Result<()> {
        if self.groups != groups {
            let len = crate::shape::product("LBL groups", groups, self.shape.e)?;
            self.group_sums = backend.zeros(len)?;
            self.group_counts = backend.idx_zeros(len)?;
            self.lbl_coef = backend.zeros(len)?;
            self.host_sums = vec![<B::Elem as num_traits::Zero>::zero(); len];
            self.host_coef = vec![<B::Elem as num_traits::Zero>::zero(); len];
            self.groups = groups;
        }
        Ok(())
    }
}
