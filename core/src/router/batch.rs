//! What a batch carries besides `X` ([`Batch`]: selection bias, token mask, packed-sequence
//! offsets) and how a router keeps it for the statistics and losses of its pass
//! ([`TokenState`]): a copy of the mask and offsets, the mask's group ids, the sequence ids of
//! the last sequence layout asked for, and the valid-token counts.

use crate::backend::Backend;
use crate::config::SeqLayout;
use crate::error::Result;
use crate::lbl::kernels::GroupTokens;
use crate::memory::{idx_view, idx_view_mut, Memory};
use crate::stage::stage_idx_in;
use crate::tokens::{check_mask, check_offsets, GroupLayout, Groups, TokenGroupIds};

/// What a batch carries besides the tokens `X`: the optional selection bias (`E`), token mask
/// (`N`, 1 = valid, 0 = padding) and packed-sequence offsets (`B + 1`, cu_seqlens, for
/// [`SeqLayout::Packed`]).
///
/// ```
/// use simbal_core::{Batch, Reference, Router, RouterConfig};
/// let (n, d, e) = (4, 2, 2);
/// let x = vec![0.5f64; n * d];
/// let r = vec![0.1, -0.2, 0.3, 0.4];
/// let mask = vec![1u32, 1, 1, 0]; // the last token is padding
/// let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(e, 1))?;
/// let pass = router.forward_batch(&x, &r, Batch::new().mask(&mask[..]))?;
/// assert_eq!(pass.valid_tokens(), 3);
/// assert_eq!(pass.stats()?.tokens, 3);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
pub struct Batch<'a, M: Memory + ?Sized> {
    /// Selection bias (`E`), added to the scores for the top-k only.
    pub bias: Option<&'a M::View>,
    /// Token mask (`N`): masked tokens are routed and dispatched but count in no statistic,
    /// loss or metric, and no loss sends them gradient.
    pub mask: Option<&'a M::IdxView>,
    /// Packed-sequence offsets `0 = o_0 < ... < o_B = N`.
    pub offsets: Option<&'a M::IdxView>,
}

impl<M: Memory + ?Sized> Default for Batch<'_, M> {
    fn default() -> Self {
        Self {
            bias: None,
            mask: None,
            offsets: None,
        }
    }
}

impl<'a, M: Memory + ?Sized> Batch<'a, M> {
    /// No bias, no mask, no offsets.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only a selection bias, if any.
    pub fn with_bias(bias: Option<&'a M::View>) -> Self {
        Self {
            bias,
            ..Self::default()
        }
    }
    /// With a selection bias.
    pub fn bias(mut self, bias: &'a M::View) -> Self {
        self.bias = Some(bias);
        self
    }
    /// With a token mask.
    pub fn mask(mut self, mask: &'a M::IdxView) -> Self {
        self.mask = Some(mask);
        self
    }
    /// With packed-sequence offsets.
    pub fn offsets(mut self, offsets: &'a M::IdxView) -> Self {
        self.offsets = Some(offsets);
        self
    }
}

/// The tokens of a router's pass: mask and offsets as given, the mask's group ids and the ids
/// of the last sequence layout asked for.
pub(crate) struct TokenState<B: Backend> {
    n: usize,
    /// Copy of the mask (allocated on the first masked batch).
    mask: Option<B::IdxBuf>,
    has_mask: bool,
    /// The mask's ids (0 or `MASKED`) and its one-entry valid count.
    mask_ids: Option<(B::IdxBuf, B::IdxBuf)>,
    valid: usize,
    /// Copy of the offsets (reallocated when the number of sequences changes).
    offsets: Option<B::IdxBuf>,
    has_offsets: bool,
    /// Sequence ids, their per-sequence valid counts, how many sequences, and the layout they
    /// hold (`None`: stale).
    seq_ids: Option<B::IdxBuf>,
    seq_tokens: Option<B::IdxBuf>,
    seq_groups: usize,
    seq_for: Option<SeqLayout>,
}

/// The groups of one loss evaluation: what the kernels read, and the valid tokens per group.
pub(crate) struct LossGroups<'a, B: Memory> {
    pub(crate) groups: Groups<'a, B>,
    pub(crate) tokens: GroupTokens<'a, B>,
    /// Valid tokens in all.
    pub(crate) valid: usize,
}

impl<B: Backend> TokenState<B> {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            mask: None,
            has_mask: false,
            mask_ids: None,
            valid: n,
            offsets: None,
            has_offsets: false,
            seq_ids: None,
            seq_tokens: None,
            seq_groups: 0,
            seq_for: None,
        }
    }

    /// Takes the batch's mask and offsets in (checked), and the mask's ids and valid count.
    pub(crate) fn load(&mut self, b: &B, batch: &Batch<'_, B>) -> Result<()> {
        let n = self.n;
        self.seq_for = None;
        self.has_mask = false;
        self.valid = n;
        if let Some(m) = batch.mask {
            // One read of the caller's mask: checked, then written into the pass's copy.
            let host = stage_idx_in(b, m)?;
            check_mask(n, &host)?;
            if self.mask.is_none() {
                self.mask = Some(b.idx_zeros(n)?);
                self.mask_ids = Some((b.idx_zeros(n)?, b.idx_zeros(1)?));
            }
            if let (Some(copy), Some((ids, count))) = (self.mask.as_mut(), self.mask_ids.as_mut()) {
                b.idx_write(idx_view_mut::<B>(copy), &host)?;
                b.token_groups(
                    TokenGroupIds {
                        n,
                        mask: Some(idx_view::<B>(copy)),
                        layout: GroupLayout::Whole,
                        ids: idx_view_mut::<B>(ids),
                        tokens: idx_view_mut::<B>(count),
                    }
                    .check(b)?,
                )?;
                let mut v = [0u32];
                b.idx_download(idx_view::<B>(count), &mut v)?;
                self.valid = v[0] as usize;
            }
            self.has_mask = true;
        }
        self.has_offsets = false;
        if let Some(o) = batch.offsets {
            let host = stage_idx_in(b, o)?;
            check_offsets(n, &host)?;
            let len = b.idx_len(o);
            if self
                .offsets
                .as_ref()
                .is_none_or(|c| b.idx_len(idx_view::<B>(c)) != len)
            {
                self.offsets = Some(b.idx_zeros(len)?);
            }
            if let Some(copy) = self.offsets.as_mut() {
                b.idx_write(idx_view_mut::<B>(copy), &host)?;
            }
            self.has_offsets = true;
        }
        Ok(())
    }

    /// Valid tokens of the pass.
    pub(crate) fn valid(&self) -> usize {
        self.valid
    }

    /// The mask as the pass holds it (a copy of the batch's).
    pub(crate) fn mask(&self) -> Option<&B::IdxView> {
        match (&self.mask, self.has_mask) {
            (Some(m), true) => Some(idx_view::<B>(m)),
            _ => None,
        }
    }

    /// The token groups of the whole pass: which tokens count.
    pub(crate) fn whole(&self) -> Groups<'_, B> {
        match (&self.mask_ids, self.has_mask) {
            (Some((ids, _)), true) => Groups::Ids {
                ids: idx_view::<B>(ids),
                count: 1,
            },
            _ => Groups::whole(self.n),
        }
    }

    /// The groups of a loss over the whole pass (`layout = None`) or per sequence.
    pub(crate) fn groups_for(
        &mut self,
        b: &B,
        layout: Option<SeqLayout>,
    ) -> Result<LossGroups<'_, B>> {
        let n = self.n;
        let runs = match layout {
            None if !self.has_mask => Some(n),
            Some(SeqLayout::BatchMajor { seq_len }) if !self.has_mask => Some(seq_len),
            _ => None,
        };
        if let Some(len) = runs {
            return Ok(LossGroups {
                groups: Groups::Runs { len },
                tokens: GroupTokens::Uniform(len),
                valid: n,
            });
        }
        let Some(layout) = layout else {
            // Masked, one group: the forward's ids; its valid count was read at the forward.
            return Ok(LossGroups {
                groups: self.whole(),
                tokens: GroupTokens::Uniform(self.valid),
                valid: self.valid,
            });
        };
        if self.seq_for != Some(layout) {
            self.compute_sequences(b, layout)?;
        }
        let (Some(ids), Some(tokens)) = (self.seq_ids.as_ref(), self.seq_tokens.as_ref()) else {
            return Err(crate::error::SimbalError::NoForward);
        };
        Ok(LossGroups {
            groups: Groups::Ids {
                ids: idx_view::<B>(ids),
                count: self.seq_groups,
            },
            tokens: GroupTokens::PerGroup(idx_view::<B>(tokens)),
            valid: self.valid,
        })
    }

    fn compute_sequences(&mut self, b: &B, layout: SeqLayout) -> Result<()> {
        let n = self.n;
        let offsets = match (&self.offsets, self.has_offsets) {
            (Some(o), true) => Some(idx_view::<B>(o)),
            _ => None,
        };
        let gl = GroupLayout::Sequences(layout, offsets);
        layout.validate(n)?;
        let groups = gl.count(b, n);
        if self.seq_ids.is_none() {
            self.seq_ids = Some(b.idx_zeros(n)?);
        }
        if self.seq_groups != groups || self.seq_tokens.is_none() {
            self.seq_tokens = Some(b.idx_zeros(groups)?);
            self.seq_groups = groups;
        }
        let mask = match (&self.mask, self.has_mask) {
            (Some(m), true) => Some(idx_view::<B>(m)),
            _ => None,
        };
        if let (Some(ids), Some(tokens)) = (self.seq_ids.as_mut(), self.seq_tokens.as_mut()) {
            b.token_groups(
                TokenGroupIds {
                    n,
                    mask,
                    layout: gl,
                    ids: idx_view_mut::<B>(ids),
                    tokens: idx_view_mut::<B>(tokens),
                }
                .check(b)?,
            )?;
        }
        self.seq_for = Some(layout);
        Ok(())
    }
}
