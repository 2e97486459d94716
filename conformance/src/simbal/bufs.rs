//! The buffers of SimBal's kernels and their arguments, for the kernel, error and fuzz checks
//! alike (see [`crate::harness::kernel`]): one set of buffers for a `D x E` weight that every
//! kernel's arguments borrow, so `normalize_columns`' outputs are `scale_free_project`'s inputs.

use crate::harness::kernel::{Fill, R};
use simbal_core::memory::{view, view_mut};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::{Backend, SimBalConfig, WeightLayout};

/// Buffers of `simbal_residual`, `normalize_columns` and `scale_free_project`.
pub(crate) struct Bufs<B: Backend> {
    /// Features.
    pub d: usize,
    /// Experts.
    pub e: usize,
    /// Gram matrix, `E x E`.
    pub gram: B::Buf,
    /// Router weight, `D x E`.
    pub r: B::Buf,
    /// Column norms, `E`.
    pub norms: B::Buf,
    /// Normalised weight, `D x E`.
    pub rn: B::Buf,
    /// Gradient w.r.t. the normalised weight, `D x E`.
    pub g: B::Buf,
    /// Gradient the projection accumulates into, `D x E`.
    pub grad: B::Buf,
}

impl<B: Backend> Bufs<B> {
    /// Every buffer for `D x E` from `fill`, in the order of the fields.
    pub fn new(d: usize, e: usize, fill: &dyn Fill<B>) -> R<Self> {
        let de = d.checked_mul(e);
        Ok(Self {
            d,
            e,
            gram: fill.vals(e.checked_mul(e))?,
            r: fill.vals(de)?,
            norms: fill.vals(Some(e))?,
            rn: fill.vals(de)?,
            g: fill.vals(de)?,
            grad: fill.vals(de)?,
        })
    }

    /// `simbal_residual` of the Gram matrix, in place.
    pub fn residual<'a>(&'a mut self, cfg: &'a SimBalConfig) -> SimbalResidual<'a, B> {
        SimbalResidual {
            cfg,
            e: self.e,
            gram: view_mut::<B>(&mut self.gram),
        }
    }

    /// `normalize_columns` of `r` into `norms` and `rn`.
    pub fn normalize(&mut self, layout: WeightLayout) -> NormalizeColumns<'_, B> {
        NormalizeColumns {
            layout,
            d: self.d,
            e: self.e,
            r: view::<B>(&self.r),
            norms: view_mut::<B>(&mut self.norms),
            rn: view_mut::<B>(&mut self.rn),
        }
    }

    /// `scale_free_project` of `g` through `rn` and `norms`, into `grad`.
    pub fn project(&mut self, layout: WeightLayout) -> ScaleFreeProject<'_, B> {
        ScaleFreeProject {
            layout,
            d: self.d,
            e: self.e,
            rn: view::<B>(&self.rn),
            norms: view::<B>(&self.norms),
            g: view::<B>(&self.g),
            grad: view_mut::<B>(&mut self.grad),
        }
    }
}
