//! Which tokens count, and in which group: the token mask and the sequence layouts (SPEC
//! "Token mask", "Token order"). Every token statistic (LBL at every level, z-loss, routing
//! statistics, metrics) reads the tokens through a [`Groups`]: runs of consecutive tokens, all
//! valid (no buffer: the unmasked fast path), or a per-token group id with [`MASKED`] for a
//! padding token, written once per batch by [`crate::Backend::token_groups`].

use crate::checked::Checked;
use crate::config::{check_seq_len, SeqLayout};
use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use crate::shape::check_len;
use crate::stage::{stage_idx_in, stage_out, Idxs};

/// The group id of a masked (padding) token: it belongs to no group and counts nowhere.
pub const MASKED: u32 = u32::MAX;

/// How a kernel finds each token's group, and whether the token counts.
pub enum Groups<'a, M: Memory + ?Sized> {
    /// Groups of `len` consecutive tokens (`len = n`: one group), every token valid.
    Runs {
        /// Tokens per group; divides `n`.
        len: usize,
    },
    /// Token `t` is in group `ids[t]`, or masked when `ids[t] = MASKED`.
    Ids {
        /// Per-token group ids (`n`), each below `count` or `MASKED`.
        ids: &'a M::IdxView,
        /// Number of groups.
        count: usize,
    },
}

impl<M: Memory + ?Sized> Clone for Groups<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: Memory + ?Sized> Copy for Groups<'_, M> {}

impl<'a, M: Memory + ?Sized> Groups<'a, M> {
    /// One group of every token.
    pub fn whole(n: usize) -> Self {
        Groups::Runs { len: n.max(1) }
    }

    /// Number of groups over `n` tokens.
    pub fn count(&self, n: usize) -> usize {
        match *self {
            Groups::Runs { len } => n / len.max(1),
            Groups::Ids { count, .. } => count,
        }
    }

    /// The precondition every kernel taking groups shares.
    ///
    /// # Errors
    /// [`SimbalError::SequenceLength`] unless a run length divides `n`;
    /// [`SimbalError::LengthMismatch`] unless the ids hold `n` entries.
    pub fn check(&self, m: &M, n: usize) -> Result<()> {
        match *self {
            Groups::Runs { len } => check_seq_len(len, n),
            Groups::Ids { ids, .. } => check_len("token group ids", n, m.idx_len(ids)),
        }
    }
}

/// [`Groups`] on the host, as the reference kernels read them.
#[derive(Debug, Clone, Copy)]
pub enum HostGroups<'a> {
    /// Groups of `len` consecutive tokens, every token valid.
    Runs {
        /// Tokens per group.
        len: usize,
    },
    /// Per-token group ids ([`MASKED`]: masked).
    Ids {
        /// The ids.
        ids: &'a [u32],
        /// Number of groups.
        count: usize,
    },
}

impl HostGroups<'_> {
    /// The group of token `t`, `None` for a masked token.
    #[inline]
    pub fn group_of(&self, t: usize) -> Option<usize> {
        match *self {
            HostGroups::Runs { len } => Some(t / len.max(1)),
            HostGroups::Ids { ids, .. } => match ids[t] {
                MASKED => None,
                g => Some(g as usize),
            },
        }
    }

    /// Number of groups over `n` tokens.
    pub fn count(&self, n: usize) -> usize {
        match *self {
            HostGroups::Runs { len } => n / len.max(1),
            HostGroups::Ids { count, .. } => count,
        }
    }
}

/// Stages `g` on the host and hands its host form to `f` (the kernels' staged defaults).
///
/// # Errors
/// Transfer failures of a device backend.
pub(crate) fn with_host_groups<M: Memory + ?Sized, R>(
    m: &M,
    g: &Groups<'_, M>,
    f: impl FnOnce(HostGroups<'_>) -> R,
) -> Result<R> {
    Ok(match *g {
        Groups::Runs { len } => f(HostGroups::Runs { len }),
        Groups::Ids { ids, count } => {
            let ids = stage_idx_in(m, ids)?;
            f(HostGroups::Ids { ids: &ids, count })
        }
    })
}

/// How [`crate::Backend::token_groups`] groups the tokens.
pub enum GroupLayout<'a, M: Memory + ?Sized> {
    /// One group of every token (the mask alone).
    Whole,
    /// A sequence layout; packed sequences take their offsets (`B + 1`) along.
    Sequences(SeqLayout, Option<&'a M::IdxView>),
}

impl<M: Memory + ?Sized> GroupLayout<'_, M> {
    /// Groups over `n` tokens (for packed sequences, the offsets' length less one).
    pub fn count(&self, m: &M, n: usize) -> usize {
        match self {
            GroupLayout::Whole => 1,
            GroupLayout::Sequences(SeqLayout::BatchMajor { seq_len }, _) => n / (*seq_len).max(1),
            GroupLayout::Sequences(SeqLayout::SequenceMajor { batch }, _) => *batch,
            GroupLayout::Sequences(SeqLayout::Packed, o) => {
                o.map_or(0, |o| m.idx_len(o).saturating_sub(1))
            }
        }
    }
}

/// Arguments of [`crate::Backend::token_groups`]: per-token group ids (masked tokens
/// [`MASKED`]) and the valid tokens of each group.
pub struct TokenGroupIds<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Token mask (`n`, 1 = valid, 0 = masked), if any.
    pub mask: Option<&'a M::IdxView>,
    /// How the tokens are grouped.
    pub layout: GroupLayout<'a, M>,
    /// Group ids (`n`, written).
    pub ids: &'a mut M::IdxView,
    /// Valid tokens per group (written; as many entries as groups).
    pub tokens: &'a mut M::IdxView,
}

impl<'a, M: Memory + ?Sized> TokenGroupIds<'a, M> {
    /// The precondition function of [`crate::Backend::token_groups`]. The mask's and the
    /// offsets' contents are checked where they enter ([`check_mask`], [`check_offsets`]).
    ///
    /// # Errors
    /// [`SimbalError::SequenceLength`] for a batch-major or sequence-major layout that does not
    /// divide `n`; [`SimbalError::Unsupported`] for a packed layout without offsets;
    /// [`SimbalError::LengthMismatch`] unless the mask and `ids` hold `n` entries and `tokens`
    /// one per group.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        if let GroupLayout::Sequences(l, o) = &self.layout {
            l.validate(self.n)?;
            if *l == SeqLayout::Packed && o.is_none() {
                return Err(SimbalError::Unsupported {
                    what: "a packed sequence layout without offsets (pass them with the batch)",
                });
            }
        }
        if let Some(mask) = self.mask {
            check_len("token mask", self.n, m.idx_len(mask))?;
        }
        check_len("token group ids", self.n, m.idx_len(self.ids))?;
        let groups = self.layout.count(m, self.n);
        check_len("valid tokens per group", groups, m.idx_len(self.tokens))?;
        Ok(Checked::new(self))
    }
}

/// Group ids and valid tokens per group on the host: `offsets` for packed sequences.
pub fn token_group_ids(
    mask: Option<&[u32]>,
    layout: Option<SeqLayout>,
    offsets: Option<&[u32]>,
    ids: &mut [u32],
    tokens: &mut [u32],
) {
    tokens.iter_mut().for_each(|c| *c = 0);
    let mut seq = 0usize;
    for (t, id) in ids.iter_mut().enumerate() {
        let g = match layout {
            None => 0,
            Some(SeqLayout::BatchMajor { seq_len }) => t / seq_len.max(1),
            Some(SeqLayout::SequenceMajor { batch }) => t % batch.max(1),
            Some(SeqLayout::Packed) => {
                let o = offsets.unwrap_or(&[]);
                while seq + 1 < o.len() && o[seq + 1] as usize <= t {
                    seq += 1;
                }
                seq
            }
        };
        let valid = mask.is_none_or(|m| m[t] != 0) && g < tokens.len();
        if valid {
            *id = g as u32;
            tokens[g] += 1;
        } else {
            *id = MASKED;
        }
    }
}

/// The host-staged default of [`crate::Backend::token_groups`].
///
/// # Errors
/// Transfer failures of a device backend.
pub fn token_groups_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<TokenGroupIds<'_, M>>,
) -> Result<()> {
    let a = a.into_inner();
    let mask = match a.mask {
        Some(v) => Some(stage_idx_in(m, v)?),
        None => None,
    };
    let (layout, offsets) = match a.layout {
        GroupLayout::Whole => (None, None),
        GroupLayout::Sequences(l, o) => (
            Some(l),
            match o {
                Some(o) => Some(stage_idx_in(m, o)?),
                None => None,
            },
        ),
    };
    let mut ids = stage_out::<_, Idxs>(m, a.ids, false)?;
    let mut tokens = stage_out::<_, Idxs>(m, a.tokens, false)?;
    token_group_ids(
        mask.as_deref(),
        layout,
        offsets.as_deref(),
        ids.slice(),
        tokens.slice(),
    );
    ids.finish(m)?;
    tokens.finish(m)
}

/// A token mask must hold `n` entries, each 0 or 1.
///
/// # Errors
/// [`SimbalError::LengthMismatch`] for another length; [`SimbalError::InvalidMask`] with the
/// first entry that is neither 0 nor 1.
pub fn check_mask(n: usize, mask: &[u32]) -> Result<()> {
    check_len("token mask", n, mask.len())?;
    match mask.iter().position(|&v| v > 1) {
        Some(token) => Err(SimbalError::InvalidMask {
            token,
            value: mask[token],
        }),
        None => Ok(()),
    }
}

/// Packed-sequence offsets must start at 0, increase strictly and end at `n` (at least one
/// sequence).
///
/// # Errors
/// [`SimbalError::InvalidOffsets`] with the first offset that breaks the rule.
pub fn check_offsets(n: usize, offsets: &[u32]) -> Result<()> {
    let bad = |position: usize| SimbalError::InvalidOffsets {
        position,
        value: offsets.get(position).copied().unwrap_or(0),
        tokens: n,
    };
    if offsets.len() < 2 || offsets[0] != 0 {
        return Err(bad(0));
    }
    for i in 1..offsets.len() {
        if offsets[i] <= offsets[i - 1] {
            return Err(bad(i));
        }
    }
    let last = offsets.len() - 1;
    if offsets[last] as usize != n {
        return Err(bad(last));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_sequence_major_and_masked_ids() {
        let mut ids = [0u32; 6];
        let mut tokens = [0u32; 2];
        let mask = [1, 1, 0, 1, 1, 1];
        let sm = SeqLayout::SequenceMajor { batch: 2 };
        token_group_ids(Some(&mask), Some(sm), None, &mut ids, &mut tokens);
        assert_eq!(ids, [0, 1, MASKED, 1, 0, 1]);
        assert_eq!(tokens, [2, 3]);
        let mut tokens = [0u32; 3];
        let off = [0, 1, 4, 6];
        token_group_ids(
            None,
            Some(SeqLayout::Packed),
            Some(&off),
            &mut ids,
            &mut tokens,
        );
        assert_eq!(ids, [0, 1, 1, 1, 2, 2]);
        assert_eq!(tokens, [1, 3, 2]);
    }

    #[test]
    fn offsets_and_masks_are_checked() {
        assert!(check_offsets(6, &[0, 1, 4, 6]).is_ok());
        for (bad, pos) in [
            (&[1u32, 6][..], 0),
            (&[0, 3, 3, 6], 2),
            (&[0, 5], 1),
            (&[0], 0),
        ] {
            match check_offsets(6, bad) {
                Err(SimbalError::InvalidOffsets { position, .. }) => assert_eq!(position, pos),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(
            check_mask(3, &[1, 2, 0]),
            Err(SimbalError::InvalidMask { token: 1, value: 2 })
        );
    }
}
