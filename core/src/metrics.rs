//! The metrics MoE training logs: load balance, routing entropy, SEU, PES, orthogonality.

use crate::checked::Checked;
use crate::config::SeqLayout;
use crate::config::WeightLayout;
use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use crate::router::score::softmax_row;
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::simbal::reference::strides;
use crate::stage::stage_elems_in;
use crate::tokens::{
    check_mask, check_offsets, token_group_ids, with_host_groups, Groups, HostGroups, MASKED,
};
use alloc::vec::Vec;

/// Load-balance metrics of per-expert counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadMetrics {
    /// Load fractions `f_e = c_e / sum(c)` (all 0 when nothing was routed).
    pub fractions: Vec<f64>,
    /// `max_e c_e / mean(c) - 1` (0 when nothing was routed).
    pub max_vio: f64,
    /// Coefficient of variation `std(c) / mean(c)` (population std).
    pub cv: f64,
    /// Normalised load entropy `H(f) / ln E` in `[0, 1]` (1 for `E = 1`).
    pub load_entropy: f64,
    /// Experts that received no assignment.
    pub dead_experts: usize,
}

impl LoadMetrics {
    /// Computes the metrics of per-expert counts.
    ///
    /// ```
    /// use simbal_core::LoadMetrics;
    /// let m = LoadMetrics::from_counts(&[4, 4, 4, 4]);
    /// assert_eq!(m.max_vio, 0.0);
    /// assert!((m.load_entropy - 1.0).abs() < 1e-12);
    /// let skew = LoadMetrics::from_counts(&[8, 0, 0, 0]);
    /// assert_eq!(skew.max_vio, 3.0);
    /// assert_eq!(skew.dead_experts, 3);
    /// ```
    pub fn from_counts(counts: &[u64]) -> Self {
        let e = counts.len();
        let total: f64 = counts.iter().map(|&c| c as f64).sum();
        let dead_experts = counts.iter().filter(|&&c| c == 0).count();
        if e == 0 || total == 0.0 {
            return Self {
                fractions: counts.iter().map(|_| 0.0).collect(),
                max_vio: 0.0,
                cv: 0.0,
                load_entropy: 0.0,
                dead_experts,
            };
        }
        let mean = total / e as f64;
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        let var = counts
            .iter()
            .map(|&c| (c as f64 - mean) * (c as f64 - mean))
            .sum::<f64>()
            / e as f64;
        let fractions: Vec<f64> = counts.iter().map(|&c| c as f64 / total).collect();
        let h: f64 = fractions
            .iter()
            .filter(|&&f| f > 0.0)
            .map(|&f| -f * libm_ln(f))
            .sum();
        let load_entropy = if e > 1 { h / libm_ln(e as f64) } else { 1.0 };
        Self {
            fractions,
            max_vio: max / mean - 1.0,
            cv: num_traits::Float::sqrt(var) / mean,
            load_entropy,
            dead_experts,
        }
    }
}

#[inline]
fn libm_ln(x: f64) -> f64 {
    num_traits::Float::ln(x)
}

/// Mean per-token routing entropy of the scores `p` (`n x e`, rows of a distribution), in nats.
/// Sigmoid scores are normalised per row first.
///
/// # Errors
/// [`SimbalError::ZeroDim`] for `n = 0` or `e = 0`; [`SimbalError::LengthMismatch`] unless `p`
/// holds `n x e`; [`SimbalError::Overflow`] for a non-finite result.
pub fn routing_entropy<T: Scalar>(n: usize, e: usize, p: &[T]) -> Result<T> {
    crate::shape::check_dims(n, 1, e)?;
    check_len("scores", n.saturating_mul(e), p.len())?;
    let mut total = T::zero();
    for row in p.chunks_exact(e) {
        total = total + row_entropy(row);
    }
    finite_metric("routing entropy", total / T::of_usize(n))
}

/// Arguments of [`crate::Backend::routing_entropy`]: the mean routing entropy of the valid
/// tokens' rows of `n x E` scores.
pub struct Entropy<'a, M: Memory + ?Sized> {
    /// Tokens `n`.
    pub n: usize,
    /// Which tokens count.
    pub groups: Groups<'a, M>,
    /// Experts `E`.
    pub e: usize,
    /// Scores `n x E`.
    pub p: &'a M::View,
}

impl<'a, M: Memory + ?Sized> Entropy<'a, M> {
    /// The precondition function of [`crate::Backend::routing_entropy`].
    ///
    /// # Errors
    /// [`SimbalError::ZeroDim`] for `n = 0` or `E = 0`; [`SimbalError::LengthMismatch`] unless
    /// `p` holds `n x E`; the groups' errors.
    pub fn check(self, m: &M) -> Result<Checked<Self>> {
        crate::shape::check_dims(self.n, 1, self.e)?;
        self.groups.check(m, self.n)?;
        check_len("scores", self.n.saturating_mul(self.e), m.len(self.p))?;
        Ok(Checked::new(self))
    }
}

/// The host-staged default of [`crate::Backend::routing_entropy`].
///
/// # Errors
/// Transfer failures of a device backend; [`SimbalError::Overflow`] for a non-finite result.
pub fn routing_entropy_staged<M: Memory + ?Sized>(
    m: &M,
    a: Checked<Entropy<'_, M>>,
) -> Result<M::Elem> {
    let a = a.into_inner();
    let p = stage_elems_in(m, a.p)?;
    with_host_groups(m, &a.groups, |g| routing_entropy_valid(a.n, a.e, g, &p))?
}

/// [`routing_entropy`] over the valid tokens of `groups` (0 when no token is valid).
///
/// # Errors
/// As [`routing_entropy`].
pub fn routing_entropy_valid<T: Scalar>(
    n: usize,
    e: usize,
    groups: HostGroups<'_>,
    p: &[T],
) -> Result<T> {
    crate::shape::check_dims(n, 1, e)?;
    check_len("scores", n.saturating_mul(e), p.len())?;
    let (mut total, mut valid) = (T::zero(), 0usize);
    for (t, row) in p.chunks_exact(e).enumerate() {
        if groups.group_of(t).is_some() {
            total = total + row_entropy(row);
            valid += 1;
        }
    }
    if valid == 0 {
        return Ok(T::zero());
    }
    finite_metric("routing entropy", total / T::of_usize(valid))
}

/// Entropy of one row of scores normalised to a distribution (0 for an all-zero row).
fn row_entropy<T: Scalar>(row: &[T]) -> T {
    let s: T = row.iter().fold(T::zero(), |a, &b| a + b);
    let mut h = T::zero();
    if s <= T::zero() {
        return h;
    }
    for &v in row {
        let q = v / s;
        if q > T::zero() {
            h = h - q * q.ln();
        }
    }
    h
}

/// SEU: per sequence of `seq_len` tokens, the fraction of the `e` experts that receive at least one
/// kept assignment; averaged over sequences. `idx` and `dropped` are `n x k`.
///
/// # Errors
/// [`SimbalError::ZeroDim`] for `n = 0` or `e = 0`; [`SimbalError::SequenceLength`] unless
/// `seq_len` divides `n`; [`SimbalError::LengthMismatch`] unless `idx` (and `dropped`) hold
/// `n x k`.
pub fn seu(
    n: usize,
    k: usize,
    e: usize,
    seq_len: usize,
    idx: &[u32],
    dropped: Option<&[u32]>,
) -> Result<f64> {
    let layout = SeqLayout::BatchMajor { seq_len };
    seu_of(n, k, e, layout, None, None, idx, dropped)
}

/// SEU for any sequence layout and token mask: per sequence, the fraction of the `e` experts
/// that receive at least one kept assignment of a valid token, averaged over the sequences with
/// a valid token (0 when there is none). `offsets` (`B + 1`, cu_seqlens) for
/// [`SeqLayout::Packed`].
///
/// ```
/// use simbal_core::{metrics::seu_of, SeqLayout};
/// // [S, B] = [2, 2]: sequence 0 is tokens 0 and 2, sequence 1 tokens 1 and 3; k = 1, E = 4.
/// let idx = [0, 1, 0, 2];
/// let v = seu_of(4, 1, 4, SeqLayout::SequenceMajor { batch: 2 }, None, None, &idx, None)?;
/// assert_eq!(v, (0.25 + 0.5) / 2.0);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
///
/// # Errors
/// As [`seu`]; [`SimbalError::InvalidMask`] and [`SimbalError::InvalidOffsets`] for a mask or
/// offsets that do not fit `n`; [`SimbalError::Unsupported`] for a packed layout without
/// offsets.
#[allow(clippy::too_many_arguments)]
pub fn seu_of(
    n: usize,
    k: usize,
    e: usize,
    layout: SeqLayout,
    mask: Option<&[u32]>,
    offsets: Option<&[u32]>,
    idx: &[u32],
    dropped: Option<&[u32]>,
) -> Result<f64> {
    crate::shape::check_dims(n, 1, e)?;
    if k == 0 {
        return Err(SimbalError::KZero);
    }
    check_len("indices", n.saturating_mul(k), idx.len())?;
    if let Some(d) = dropped {
        check_len("dropped flags", n.saturating_mul(k), d.len())?;
    }
    layout.validate(n)?;
    if let Some(m) = mask {
        check_mask(n, m)?;
    }
    let groups = match (layout, offsets) {
        (SeqLayout::BatchMajor { seq_len }, _) => n / seq_len,
        (SeqLayout::SequenceMajor { batch }, _) => batch,
        (SeqLayout::Packed, Some(o)) => {
            check_offsets(n, o)?;
            o.len() - 1
        }
        (SeqLayout::Packed, None) => {
            return Err(SimbalError::Unsupported {
                what: "SEU of packed sequences without offsets",
            })
        }
    };
    let mut ids = alloc::vec![0u32; n];
    let mut tokens = alloc::vec![0u32; groups];
    token_group_ids(mask, Some(layout), offsets, &mut ids, &mut tokens);
    // Distinct (sequence, expert) pairs by sorting: scratch bounded by the assignments, never
    // by `e` (which no buffer bounds).
    let mut seen: Vec<(u32, u32)> = Vec::with_capacity(n * k);
    for (a, &i) in idx.iter().enumerate() {
        let g = ids[a / k];
        let kept = dropped.is_none_or(|d| d[a] == 0);
        if g != MASKED && kept && (i as usize) < e {
            seen.push((g, i));
        }
    }
    seen.sort_unstable();
    seen.dedup();
    let live = tokens.iter().filter(|&&t| t > 0).count();
    if live == 0 {
        return Ok(0.0);
    }
    Ok(seen.len() as f64 / e as f64 / live as f64)
}

/// PES (paper eq. 5-6): every expert run on every token; `outputs` is `e x n x d_out`
/// (expert-major). Returns the mean over tokens of `2/(E(E-1)) sum_{i<j} cos(y_i, y_j)`, with a
/// zero vector's cosine 0. `E = 1` gives 0.
///
/// # Errors
/// [`SimbalError::ZeroDim`] for a zero dimension; [`SimbalError::LengthMismatch`] unless
/// `outputs` holds `e x n x d_out`; [`SimbalError::Overflow`] for a non-finite result.
pub fn pes<T: Scalar>(e: usize, n: usize, d_out: usize, outputs: &[T]) -> Result<T> {
    crate::shape::check_dims(n, d_out, e)?;
    check_len(
        "expert outputs",
        e.saturating_mul(n).saturating_mul(d_out),
        outputs.len(),
    )?;
    if e < 2 {
        return Ok(T::zero());
    }
    let at = |x: usize, t: usize| &outputs[(x * n + t) * d_out..(x * n + t + 1) * d_out];
    let mut total = T::zero();
    let mut norms = alloc::vec![T::zero(); e];
    for t in 0..n {
        for (x, nrm) in norms.iter_mut().enumerate() {
            *nrm = at(x, t).iter().fold(T::zero(), |a, &v| a + v * v).sqrt();
        }
        let mut s = T::zero();
        for i in 0..e {
            for j in i + 1..e {
                if norms[i] > T::zero() && norms[j] > T::zero() {
                    let dot = at(i, t)
                        .iter()
                        .zip(at(j, t))
                        .fold(T::zero(), |a, (&u, &v)| a + u * v);
                    s = s + dot / (norms[i] * norms[j]);
                }
            }
        }
        total = total + s * T::of(2.0) / (T::of_usize(e) * T::of_usize(e - 1));
    }
    finite_metric("PES", total / T::of_usize(n))
}

/// Orthogonality error of the router weight: `(mean_ab G_ab^2, max_ab |G_ab|)` with
/// `G = R^T R - I`.
///
/// # Errors
/// [`SimbalError::ZeroDim`] for `d = 0` or `e = 0`; [`SimbalError::LengthMismatch`] unless `r`
/// holds `D x E`; [`SimbalError::Overflow`] for a non-finite result.
pub fn orthogonality_error<T: Scalar>(
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[T],
) -> Result<(T, T)> {
    crate::shape::check_dims(1, d, e)?;
    check_len("router weight", d.saturating_mul(e), r.len())?;
    let (rs, cs) = strides(layout, d, e);
    let mut sum = T::zero();
    let mut max = T::zero();
    for a in 0..e {
        for b in 0..e {
            let mut s = T::zero();
            for i in 0..d {
                s = s + r[i * rs + a * cs] * r[i * rs + b * cs];
            }
            let g = if a == b { s - T::one() } else { s };
            sum = sum + g * g;
            if g.abs() > max {
                max = g.abs();
            }
        }
    }
    Ok((
        finite_metric("orthogonality error", sum / T::of_usize(e * e))?,
        finite_metric("orthogonality error", max)?,
    ))
}

/// A metric that overflowed (or met a non-finite input) is an error, never an inf/NaN value.
fn finite_metric<T: Scalar>(what: &'static str, v: T) -> Result<T> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(SimbalError::Overflow { what })
    }
}

/// Softmax of logits rows (helper for metrics of raw logits).
///
/// # Errors
/// [`SimbalError::LengthMismatch`] unless `p` is as long as `z`; [`SimbalError::ZeroDim`] for
/// `e = 0`.
pub fn softmax_rows<T: Scalar>(e: usize, z: &[T], p: &mut [T]) -> Result<()> {
    check_len("softmax output", z.len(), p.len())?;
    if e == 0 {
        return Err(SimbalError::ZeroDim { what: "E" });
    }
    for (zr, pr) in z.chunks_exact(e).zip(p.chunks_exact_mut(e)) {
        softmax_row(zr, pr);
    }
    Ok(())
}
