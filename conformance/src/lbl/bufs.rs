//! The buffers of the LBL's kernels and their arguments, for the kernel, error and fuzz checks
//! alike (see [`crate::harness::kernel`]): one set of buffers of a [`Shape`] that every kernel's
//! arguments borrow, so `group_counts`' output is `lbl_coefficients`' input.

use crate::harness::kernel::{Fill, R};
use simbal_core::lbl::kernels::{GroupCounts, GroupSums, GroupTokens, LblCoefficients};
use simbal_core::lbl::reference::LblScales;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::tokens::Groups;
use simbal_core::{Backend, LblConfig};

/// The shape of a [`Bufs`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Tokens.
    pub n: usize,
    /// Columns of the per-group sums.
    pub cols: usize,
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Tokens per group (`n / group_len` groups) when the tokens come in runs.
    pub group_len: usize,
    /// Tokens are grouped by [`Bufs::ids`] (`Groups::Ids`, masked entries included) instead,
    /// into this many groups; the LBL coefficients then take [`Bufs::tokens`] per group.
    pub id_groups: Option<usize>,
    /// `group_column_sums` normalises each row first.
    pub normalize: bool,
    /// `group_counts` counts every assignment (no dropped flags).
    pub all_assignments: bool,
}

impl Shape {
    /// `n` tokens in groups of `group_len`, `k` of `e` experts each, sums over `e` columns.
    pub fn of(n: usize, e: usize, k: usize, group_len: usize) -> Self {
        Self {
            n,
            cols: e,
            e,
            k,
            group_len,
            id_groups: None,
            normalize: false,
            all_assignments: false,
        }
    }

    /// Groups.
    pub fn groups(&self) -> usize {
        self.id_groups
            .unwrap_or_else(|| self.n / self.group_len.max(1))
    }
}

/// Buffers of `group_column_sums`, `group_counts` and `lbl_coefficients`.
pub(crate) struct Bufs<B: Backend> {
    /// The shape.
    pub shape: Shape,
    /// What `group_column_sums` sums, `n x cols`.
    pub a: B::Buf,
    /// Expert indices, `n x k`.
    pub idx: B::IdxBuf,
    /// Dropped flags, `n x k`.
    pub dropped: B::IdxBuf,
    /// Per-group column sums, `groups x cols`.
    pub col_sums: B::Buf,
    /// Per-group kept counts, `groups x E`.
    pub counts: B::IdxBuf,
    /// Per-group score sums, `groups x E`.
    pub sums: B::Buf,
    /// LBL coefficients, `groups x E`.
    pub coef: B::Buf,
    /// Per-token group ids (`n`; `MASKED` for a masked token).
    pub ids: B::IdxBuf,
    /// Valid tokens per group.
    pub tokens: B::IdxBuf,
}

impl<B: Backend> Bufs<B> {
    /// Every buffer of `shape` from `fill`, in the order of the fields.
    pub fn new(shape: Shape, fill: &dyn Fill<B>) -> R<Self> {
        let Shape { n, cols, e, k, .. } = shape;
        let groups = shape.groups();
        let (nk, ge) = (n.checked_mul(k), groups.checked_mul(e));
        Ok(Self {
            shape,
            a: fill.vals(n.checked_mul(cols))?,
            idx: fill.idx(nk, e)?,
            dropped: fill.idx(nk, 2)?,
            col_sums: fill.vals(groups.checked_mul(cols))?,
            counts: fill.idx(ge, 3)?,
            sums: fill.vals(ge)?,
            coef: fill.vals(ge)?,
            ids: fill.idx(Some(n), groups)?,
            tokens: fill.idx(Some(groups), n)?,
        })
    }

    /// `group_column_sums` of `a` into `col_sums`.
    pub fn group_sums(&mut self) -> GroupSums<'_, B> {
        let s = self.shape;
        GroupSums {
            n: s.n,
            cols: s.cols,
            groups: groups_of(s, &self.ids),
            normalize: s.normalize,
            a: view::<B>(&self.a),
            out: view_mut::<B>(&mut self.col_sums),
        }
    }

    /// `group_counts` of the kept assignments into `counts`.
    pub fn group_counts(&mut self) -> GroupCounts<'_, B> {
        let s = self.shape;
        GroupCounts {
            n: s.n,
            k: s.k,
            e: s.e,
            groups: groups_of(s, &self.ids),
            idx: idx_view::<B>(&self.idx),
            dropped: (!s.all_assignments).then(|| idx_view::<B>(&self.dropped)),
            out: idx_view_mut::<B>(&mut self.counts),
        }
    }

    /// `lbl_coefficients` of `counts` and `sums` into `coef`.
    pub fn coefficients<'a>(
        &'a mut self,
        cfg: &'a LblConfig,
        scales: LblScales,
    ) -> LblCoefficients<'a, B> {
        LblCoefficients {
            cfg,
            e: self.shape.e,
            tokens: match self.shape.id_groups {
                Some(_) => GroupTokens::PerGroup(idx_view::<B>(&self.tokens)),
                None => GroupTokens::Uniform(self.shape.group_len),
            },
            scales,
            counts: idx_view::<B>(&self.counts),
            sums: view::<B>(&self.sums),
            coef: view_mut::<B>(&mut self.coef),
        }
    }
}

/// The tokens' groups of a shape: by `ids` or in runs.
fn groups_of<B: Backend>(s: Shape, ids: &B::IdxBuf) -> Groups<'_, B> {
    match s.id_groups {
        Some(count) => Groups::Ids {
            ids: idx_view::<B>(ids),
            count,
        },
        None => Groups::Runs { len: s.group_len },
    }
}
