//! The LBL's kernel family: per-group score sums and kept counts, and the loss value with its
//! gradient coefficients, with their precondition functions and host-staged defaults.

use super::reference::{self, LblScales};
use crate::checked::Checked;
use crate::config::LblConfig;
use crate::error::Result;
use crate::memory::Memory;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_idx_in, stage_out, Elems, Idxs};

/// Arguments of [`crate::Backend::group_column_sums`]: `out[b, c] = sum over the rows t of group
/// b of a[t, c]`, groups of `group_len` consecutive rows of the `n x cols` matrix `a`.
pub struct GroupSums<'a, M: Memory + ?Sized> {
    /// Rows `n`.
    pub n: usize,
    /// Columns.
    pub cols: usize,
    /// Rows per group; divides `n`.
    pub group_len: usize,
    /// The matrix, `n x cols`.
    pub a: &'a M::View,
    /// The sums, `(n / group_len) x cols`.
    pub out: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> GroupSums<'a, M> {
    /// The precondition function of [`crate::Backend::group_column_sums`].
    ///
    /// # Errors
    /// [`crate::SimbalError::SequenceLength`] unless `group_len` divides `n`;
    /// [`crate::SimbalError::LengthMismatch`] unless `a` holds `n x cols` and `out`
    /// `(n / group_len) x cols`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        crate::config::check_seq_len(self.group_len, self.n)?;
        check_len("matrix", self.n.saturating_mul(self.cols), m.len(self.a))?;
        check_len(
            "group sums",
            (self.n / self.group_len).saturating_mul(self.cols),
            m.len(self.out),
        )?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::group_column_sums`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn group_column_sums_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<GroupSums<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let x = stage_elems_in(m, a.a)?;
    let mut o = stage_out::<_, Elems>(m, a.out, false)?;
    reference::group_column_sums(a.cols, a.group_len, &x, o.slice());
    o.finish(m)
}

/// Arguments of [`crate::Backend::group_counts`]: kept assignments per group of `group_len`
/// tokens and expert.
pub struct GroupCounts<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Experts `E`.
    pub e: usize,
    /// Tokens per group; divides `n`.
    pub group_len: usize,
    /// Expert indices `n x k`.
    pub idx: &'a M::IdxView,
    /// Dropped flags `n x k`.
    pub dropped: &'a M::IdxView,
    /// Counts `(n / group_len) x E`.
    pub out: &'a mut M::IdxView,
}

impl<'a, M: Memory + ?Sized> GroupCounts<'a, M> {
    /// The precondition function of [`crate::Backend::group_counts`].
    ///
    /// # Errors
    /// [`crate::SimbalError::SequenceLength`] unless `group_len` divides `n`;
    /// [`crate::SimbalError::LengthMismatch`] unless `idx` and `dropped` hold `n x k` and `out`
    /// `(n / group_len) x E`. Indices at or above `E` are not counted.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        crate::config::check_seq_len(self.group_len, self.n)?;
        let nk = self.n.saturating_mul(self.k);
        check_len("indices", nk, m.idx_len(self.idx))?;
        check_len("dropped flags", nk, m.idx_len(self.dropped))?;
        check_len(
            "group counts",
            (self.n / self.group_len).saturating_mul(self.e),
            m.idx_len(self.out),
        )?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::group_counts`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn group_counts_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<GroupCounts<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let idx = stage_idx_in(m, a.idx)?;
    let dropped = stage_idx_in(m, a.dropped)?;
    let mut o = stage_out::<_, Idxs>(m, a.out, false)?;
    reference::group_counts(a.k, a.e, a.group_len, &idx, &dropped, o.slice());
    o.finish(m)
}

/// Arguments of [`crate::Backend::lbl_coefficients`]: the LBL value from per-group kept counts
/// and score sums, and its gradient coefficients `dL/dp_te` per group (see
/// [`reference::lbl_value_and_coef`]).
pub struct LblCoefficients<'a, M: Memory + ?Sized> {
    /// The loss's configuration.
    pub cfg: &'a LblConfig,
    /// Experts `E`.
    pub e: usize,
    /// Token normalisers and the number of groups.
    pub scales: LblScales,
    /// Kept counts, `groups x E`.
    pub counts: &'a M::IdxView,
    /// Score sums, `groups x E`.
    pub sums: &'a M::View,
    /// Gradient coefficients, `groups x E` (written).
    pub coef: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> LblCoefficients<'a, M> {
    /// The precondition function of [`crate::Backend::lbl_coefficients`].
    ///
    /// # Errors
    /// [`crate::SimbalError::LengthMismatch`] unless `counts`, `sums` and `coef` hold
    /// `groups x E`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let len = self.scales.groups.saturating_mul(self.e);
        check_len("LBL group counts", len, m.idx_len(self.counts))?;
        check_len("LBL group sums", len, m.len(self.sums))?;
        check_len("LBL coefficients", len, m.len(self.coef))?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::lbl_coefficients`]; returns the loss value.
///
/// # Errors
/// Transfer failures of a device backend.
pub fn lbl_coefficients_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<LblCoefficients<'_, M>>,
) -> Result<M::Elem> {
    let a = a.into_inner();
    let counts = stage_idx_in(m, a.counts)?;
    let sums = stage_elems_in(m, a.sums)?;
    let mut c = stage_out::<_, Elems>(m, a.coef, false)?;
    let v = reference::lbl_value_and_coef(
        a.cfg,
        a.e,
        &a.scales,
        |be| counts[be] as f64,
        &sums,
        c.slice(),
    );
    c.finish(m)?;
    Ok(v)
}
