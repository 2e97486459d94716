//! The typed error every public entry point returns instead of panicking.

use alloc::string::String;
use core::fmt;

/// Everything that can go wrong in simbal, each variant naming what and where.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SimbalError {
    /// A dimension that must be at least 1 is 0 (`what` is `"N"`, `"D"` or `"E"`).
    ZeroDim {
        /// Which dimension.
        what: &'static str,
    },
    /// `k = 0`: every token must pick at least one expert.
    KZero,
    /// `k > E`: a token cannot pick more experts than exist.
    KTooLarge {
        /// Experts per token asked for.
        k: usize,
        /// Number of experts.
        experts: usize,
    },
    /// A buffer's length does not match the shape it should have.
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The number of expert groups does not divide `E`, or is 0.
    GroupsDoNotDivide {
        /// Groups asked for.
        groups: usize,
        /// Number of experts.
        experts: usize,
    },
    /// More expert groups than group-limited selection supports.
    TooManyGroups {
        /// Groups asked for.
        groups: usize,
        /// The limit, [`crate::config::MAX_GROUPS`].
        max: usize,
    },
    /// `top_groups` is 0 or more than the number of groups.
    InvalidTopGroups {
        /// Groups kept.
        top_groups: usize,
        /// Groups in all.
        groups: usize,
    },
    /// Group-limited selection leaves fewer than `k` experts to choose from.
    GroupSelectionTooSmall {
        /// Experts per token.
        k: usize,
        /// Experts in the kept groups.
        available: usize,
    },
    /// A capacity factor that is not finite and positive.
    InvalidCapacityFactor {
        /// The value given.
        value: f64,
    },
    /// A configuration coefficient that is out of range (negative or non-finite).
    InvalidCoefficient {
        /// Which coefficient.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// Sequence-level statistics need `N` to be a whole number of sequences.
    SequenceLength {
        /// Tokens per sequence.
        seq_len: usize,
        /// Tokens in the batch.
        tokens: usize,
    },
    /// A token mask entry that is neither 0 nor 1.
    InvalidMask {
        /// Token position.
        token: usize,
        /// The value found.
        value: u32,
    },
    /// Packed-sequence offsets that do not fit the batch: they must start at 0, increase
    /// strictly and end at `N`.
    InvalidOffsets {
        /// Position of the first offending offset.
        position: usize,
        /// Its value.
        value: u32,
        /// Tokens in the batch.
        tokens: usize,
    },
    /// A non-finite input value, with its position.
    NonFinite {
        /// Which argument.
        what: &'static str,
        /// Row of the first non-finite value.
        row: usize,
        /// Column of the first non-finite value.
        col: usize,
    },
    /// A result overflowed the element type (e.g. the z-loss of logits near 1e30 in f32).
    Overflow {
        /// Which result.
        what: &'static str,
    },
    /// Global-batch LBL was asked for without the merged statistics it needs.
    MissingGlobalStats,
    /// Statistics of a different number of experts were given.
    StatsMismatch {
        /// Experts expected.
        expected: usize,
        /// Experts in the statistics given.
        got: usize,
    },
    /// A routing result or a backward pass was asked for before a forward pass (of the same
    /// shape) ran on this router.
    NoForward,
    /// A combination of options this call does not support.
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// An error reported by a backend (a device or driver failure).
    Backend {
        /// The backend's message.
        message: String,
    },
}

impl fmt::Display for SimbalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SimbalError::*;
        match self {
            ZeroDim { what } => write!(f, "dimension {what} is 0; it must be at least 1"),
            KZero => write!(f, "k = 0: each token must select at least one expert"),
            KTooLarge { k, experts } => {
                write!(
                    f,
                    "k = {k} is larger than the number of experts E = {experts}"
                )
            }
            LengthMismatch {
                what,
                expected,
                got,
            } => write!(
                f,
                "{what} has length {got}, but the shape requires {expected}"
            ),
            GroupsDoNotDivide { groups, experts } => write!(
                f,
                "{groups} expert groups do not divide E = {experts} evenly"
            ),
            TooManyGroups { groups, max } => {
                write!(
                    f,
                    "{groups} expert groups exceed the supported maximum of {max}"
                )
            }
            InvalidTopGroups { top_groups, groups } => write!(
                f,
                "top_groups = {top_groups} must be between 1 and the number of groups ({groups})"
            ),
            GroupSelectionTooSmall { k, available } => write!(
                f,
                "group-limited selection leaves {available} experts, fewer than k = {k}"
            ),
            InvalidCapacityFactor { value } => write!(
                f,
                "capacity factor {value} must be finite and greater than 0"
            ),
            InvalidCoefficient { what, value } => {
                write!(f, "{what} = {value} must be finite and non-negative")
            }
            SequenceLength { seq_len, tokens } => write!(
                f,
                "sequence length {seq_len} must be at least 1 and divide the {tokens} tokens"
            ),
            InvalidMask { token, value } => write!(
                f,
                "token mask entry {value} at token {token} must be 0 (masked) or 1 (valid)"
            ),
            InvalidOffsets {
                position,
                value,
                tokens,
            } => write!(
                f,
                "sequence offset {value} at position {position} does not fit: offsets start at 0, \
                 increase strictly and end at the {tokens} tokens"
            ),
            NonFinite { what, row, col } => {
                write!(
                    f,
                    "{what} has a non-finite value at row {row}, column {col}"
                )
            }
            Overflow { what } => write!(f, "{what} overflowed the element type"),
            MissingGlobalStats => write!(
                f,
                "global-batch LBL needs merged statistics; pass them to the backward call"
            ),
            StatsMismatch { expected, got } => write!(
                f,
                "statistics cover {got} experts, but the router has {expected}"
            ),
            NoForward => write!(
                f,
                "no routing to read or differentiate: run a forward pass first (none has run on this router \
                 since it was made or reconfigured, or it was for another shape)"
            ),
            Unsupported { what } => write!(f, "unsupported: {what}"),
            Backend { message } => write!(f, "backend error: {message}"),
        }
    }
}

impl core::error::Error for SimbalError {}

/// Result alias used throughout simbal.
pub type Result<T, E = SimbalError> = core::result::Result<T, E>;
