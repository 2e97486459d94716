//! The LBL's kernel family: per-group score sums and counts, and the loss value with its
//! gradient coefficients, with their precondition functions and host-staged defaults.

use super::reference::{self, LblScales};
use crate::checked::Checked;
use crate::config::LblConfig;
use crate::error::Result;
use crate::memory::Memory;
use crate::shape::check_len;
use crate::stage::{stage_elems_in, stage_idx_in, stage_out, Elems, Idxs};
use crate::tokens::{with_host_groups, Groups};

/// Arguments of [`crate::Backend::group_column_sums`]: `out[b, c] = sum over the valid rows t
/// of group b of a[t, c]` (each row normalised to sum 1 first when `normalize`: the LBL's
/// scores `q` of element-wise score functions).
pub struct GroupSums<'a, M: Memory + ?Sized> {
    /// Rows `n`.
    pub n: usize,
    /// Columns.
    pub cols: usize,
    /// The rows' groups and mask.
    pub groups: Groups<'a, M>,
    /// Normalise each row by `1 / (sum + 1e-20)` before summing.
    pub normalize: bool,
    /// The matrix, `n x cols`.
    pub a: &'a M::View,
    /// The sums, `groups x cols`.
    pub out: &'a mut M::View,
}

impl<'a, M: Memory + ?Sized> GroupSums<'a, M> {
    /// The precondition function of [`crate::Backend::group_column_sums`].
    ///
    /// # Errors
    /// The groups' errors ([`Groups::check`]); [`crate::SimbalError::LengthMismatch`] unless
    /// `a` holds `n x cols` and `out` `groups x cols`.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        self.groups.check(m, self.n)?;
        check_len("matrix", self.n.saturating_mul(self.cols), m.len(self.a))?;
        let g = self.groups.count(self.n);
        check_len("group sums", g.saturating_mul(self.cols), m.len(self.out))?;
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
    with_host_groups(m, &a.groups, |g| {
        reference::group_column_sums(a.cols, g, a.normalize, &x, o.slice())
    })?;
    o.finish(m)
}

/// Arguments of [`crate::Backend::group_counts`]: assignments of the valid tokens per group and
/// expert.
pub struct GroupCounts<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Experts `E`.
    pub e: usize,
    /// The tokens' groups and mask.
    pub groups: Groups<'a, M>,
    /// Expert indices `n x k`.
    pub idx: &'a M::IdxView,
    /// Dropped flags `n x k`: only kept assignments count. `None`: every assignment counts.
    pub dropped: Option<&'a M::IdxView>,
    /// Counts `groups x E`.
    pub out: &'a mut M::IdxView,
}

impl<'a, M: Memory + ?Sized> GroupCounts<'a, M> {
    /// The precondition function of [`crate::Backend::group_counts`].
    ///
    /// # Errors
    /// The groups' errors ([`Groups::check`]); [`crate::SimbalError::LengthMismatch`] unless
    /// `idx` and `dropped` hold `n x k` and `out` `groups x E`. Indices at or above `E` are not
    /// counted.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        self.groups.check(m, self.n)?;
        let nk = self.n.saturating_mul(self.k);
        check_len("indices", nk, m.idx_len(self.idx))?;
        if let Some(d) = self.dropped {
            check_len("dropped flags", nk, m.idx_len(d))?;
        }
        let g = self.groups.count(self.n);
        check_len(
            "group counts",
            g.saturating_mul(self.e),
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
    let dropped = match a.dropped {
        Some(d) => Some(stage_idx_in(m, d)?),
        None => None,
    };
    let mut o = stage_out::<_, Idxs>(m, a.out, false)?;
    with_host_groups(m, &a.groups, |g| {
        reference::group_counts(a.k, a.e, g, &idx, dropped.as_deref(), o.slice())
    })?;
    o.finish(m)
}

/// Valid tokens per LBL group.
pub enum GroupTokens<'a, M: Memory + ?Sized> {
    /// Every group has this many valid tokens (no mask, equal groups).
    Uniform(usize),
    /// One count per group.
    PerGroup(&'a M::IdxView),
}

impl<M: Memory + ?Sized> Clone for GroupTokens<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: Memory + ?Sized> Copy for GroupTokens<'_, M> {}

/// Arguments of [`crate::Backend::lbl_coefficients`]: the LBL value from per-group counts,
/// valid tokens and score sums, and its gradient coefficients `dL/dq_te` per group (see
/// [`reference::lbl_value_and_coef`]).
pub struct LblCoefficients<'a, M: Memory + ?Sized> {
    /// The loss's configuration.
    pub cfg: &'a LblConfig,
    /// Experts `E`.
    pub e: usize,
    /// `k`, the number of groups and the factor.
    pub scales: LblScales,
    /// Valid tokens per group.
    pub tokens: GroupTokens<'a, M>,
    /// Counts, `groups x E`.
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
    /// `groups x E` and per-group tokens one entry per group.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        let len = self.scales.groups.saturating_mul(self.e);
        check_len("LBL group counts", len, m.idx_len(self.counts))?;
        check_len("LBL group sums", len, m.len(self.sums))?;
        check_len("LBL coefficients", len, m.len(self.coef))?;
        if let GroupTokens::PerGroup(t) = self.tokens {
            check_len("LBL group tokens", self.scales.groups, m.idx_len(t))?;
        }
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
    let tokens = match a.tokens {
        GroupTokens::PerGroup(t) => Some(stage_idx_in(m, t)?),
        GroupTokens::Uniform(_) => None,
    };
    let uniform = match a.tokens {
        GroupTokens::Uniform(n) => n as f64,
        GroupTokens::PerGroup(_) => 0.0,
    };
    let sums = stage_elems_in(m, a.sums)?;
    let mut c = stage_out::<_, Elems>(m, a.coef, false)?;
    let v = reference::lbl_value_and_coef(
        a.cfg,
        a.e,
        &a.scales,
        |b| tokens.as_ref().map_or(uniform, |t| f64::from(t[b])),
        |be| f64::from(counts[be]),
        &sums,
        c.slice(),
    );
    c.finish(m)?;
    Ok(v)
}
