//! SimBal's kernel family: the element-wise pass on the Gram matrix and, for ScaleFree, the
//! column normalisation and its backward, with their precondition functions and host-staged
//! defaults. The two GEMMs around them are [`crate::Backend::gemm`].

use super::reference;
use crate::checked::Checked;
use crate::config::{SimBalConfig, WeightLayout};
use crate::error::Result;
use crate::memory::Memory;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_out, Elems};

/// Arguments of [`crate::Backend::simbal_residual`]: turns the Gram matrix into the multiplier
/// `M` in place (see [`reference::simbal_residual`]).
pub struct SimbalResidual<'a, M: Memory + ?Sized> {
    /// The loss's configuration.
    pub cfg: &'a SimBalConfig,
    /// Experts `E`.
    pub e: usize,
    /// The `E x E` Gram matrix on entry, `M` on exit.
    pub gram: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> SimbalResidual<'a, M> {
    /// The precondition function of [`crate::Backend::simbal_residual`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `gram` holds `E x E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        check_len(
            "Gram matrix",
            self.e.saturating_mul(self.e),
            m.len(self.gram),
        )?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::simbal_residual`]; returns the loss value.
///
/// # Errors
/// Transfer failures of a device backend.
pub fn simbal_residual_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<SimbalResidual<'_, M>>,
) -> Result<M::Elem> {
    let a = a.into_inner();
    let mut g = stage_out::<_, Elems>(m, a.gram, true)?;
    let loss = reference::simbal_residual(a.cfg, a.e, g.slice());
    g.finish(m)?;
    Ok(loss)
}

/// Arguments of [`crate::Backend::normalize_columns`]: column norms and the column-normalised
/// weight (ScaleFree SimBal).
pub struct NormalizeColumns<'a, M: Memory + ?Sized> {
    /// Layout of the weight.
    pub layout: WeightLayout,
    /// Model width `D`.
    pub d: usize,
    /// Experts `E`.
    pub e: usize,
    /// The router weight, `D x E` elements.
    pub r: &'a M::View,
    /// Column norms (`E`, written).
    pub norms: &'a mut M::View,
    /// The normalised weight (`D x E` elements, written).
    pub rn: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> NormalizeColumns<'a, M> {
    /// The precondition function of [`crate::Backend::normalize_columns`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `r` and `rn` hold `D x E` and `norms` `E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let de = self.d.saturating_mul(self.e);
        check_len("router weight", de, m.len(self.r))?;
        check_len("column norms", self.e, m.len(self.norms))?;
        check_len("normalised weight", de, m.len(self.rn))?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::normalize_columns`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn normalize_columns_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<NormalizeColumns<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let r = stage_elems_in(m, a.r)?;
    let mut nm = stage_out::<_, Elems>(m, a.norms, false)?;
    let mut out = stage_out::<_, Elems>(m, a.rn, false)?;
    reference::column_norms(a.layout, a.d, a.e, &r, nm.slice());
    reference::normalize_columns(a.layout, a.d, a.e, &r, nm.slice(), out.slice());
    nm.finish(m)?;
    out.finish(m)
}

/// Arguments of [`crate::Backend::scale_free_project`]: adds the gradient through the column
/// normalisation to `grad` (see [`reference::scale_free_project`]).
pub struct ScaleFreeProject<'a, M: Memory + ?Sized> {
    /// Layout of the weight.
    pub layout: WeightLayout,
    /// Model width `D`.
    pub d: usize,
    /// Experts `E`.
    pub e: usize,
    /// The normalised weight (`D x E` elements).
    pub rn: &'a M::View,
    /// Column norms (`E`).
    pub norms: &'a M::View,
    /// `dL/dR_n` (`D x E` elements).
    pub g: &'a M::View,
    /// The router gradient the projection is added to (`D x E` elements).
    pub grad: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> ScaleFreeProject<'a, M> {
    /// The precondition function of [`crate::Backend::scale_free_project`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `rn`, `g` and `grad` hold `D x E` and
    /// `norms` `E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let de = self.d.saturating_mul(self.e);
        check_len("normalised weight", de, m.len(self.rn))?;
        check_len("column norms", self.e, m.len(self.norms))?;
        check_len("normalised gradient", de, m.len(self.g))?;
        check_len("router gradient", de, m.len(self.grad))?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::scale_free_project`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn scale_free_project_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<ScaleFreeProject<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let rn = stage_elems_in(m, a.rn)?;
    let norms = stage_elems_in(m, a.norms)?;
    let g = stage_elems_in(m, a.g)?;
    let mut out = stage_out::<_, Elems>(m, a.grad, true)?;
    reference::scale_free_project(a.layout, a.d, a.e, &rn, &norms, &g, out.slice(), true);
    out.finish(m)
}
