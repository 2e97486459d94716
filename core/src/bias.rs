//! Aux-loss-free bias balancing (DeepSeek-V3): no gradient, the selection bias moves towards
//! balance, `b_e += u * sign(mean(c) - c_e)`; the centred option subtracts the mean update.
//! The update is `E` values per step from (merged) statistics, so every backend runs it on the
//! host: no kernel of its own.

use crate::config::BiasUpdateConfig;
use crate::error::{Result, SimbalError};
use crate::memory::Memory;
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stage::{stage_out, Elems};
use crate::stats::RoutingStats;

/// Aux-loss-free bias update of the backend's bias buffer (`E`) from (merged) statistics.
///
/// ```
/// use simbal_core::{update_bias, BiasUpdateConfig, Reference, RoutingStats};
/// let mut stats = RoutingStats::empty(2);
/// stats.counts = vec![6, 2];
/// let mut bias = [0.0f64; 2];
/// update_bias(&Reference::<f64>::new(), &BiasUpdateConfig::default(), &stats, &mut bias)?;
/// assert!(bias[0] < 0.0 && bias[1] > 0.0); // the over-loaded expert is pushed down
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
///
/// # Errors
/// [`SimbalError::InvalidCoefficient`] for a negative or non-finite rate;
/// [`SimbalError::ZeroDim`] for statistics of no expert; [`SimbalError::LengthMismatch`] unless
/// `bias` has one entry per expert; transfer failures.
pub fn update_bias<M: Memory + ?Sized>(
    m: &M,
    cfg: &BiasUpdateConfig,
    stats: &RoutingStats,
    bias: &mut M::View,
) -> Result<()> {
    crate::config::check_coefficient("bias update rate", cfg.rate)?;
    let e = stats.counts.len();
    if e == 0 {
        return Err(SimbalError::ZeroDim { what: "E" });
    }
    check_len("selection bias", e, m.len(bias))?;
    let mut host = stage_out::<_, Elems>(m, bias, true)?;
    update_bias_from_counts(cfg, &stats.counts, host.slice());
    host.finish(m)
}

/// Updates `bias` (`E`) in place from per-expert counts (`E`, ideally merged statistics).
pub fn update_bias_from_counts<T: Scalar>(cfg: &BiasUpdateConfig, counts: &[u64], bias: &mut [T]) {
    let e = counts.len();
    if e == 0 {
        return;
    }
    let mean = counts.iter().map(|&c| c as f64).sum::<f64>() / e as f64;
    let step = |c: u64| {
        let diff = mean - c as f64;
        if diff > 0.0 {
            cfg.rate
        } else if diff < 0.0 {
            -cfg.rate
        } else {
            0.0
        }
    };
    let shift = if cfg.centred {
        counts.iter().map(|&c| step(c)).sum::<f64>() / e as f64
    } else {
        0.0
    };
    for (b, &c) in bias.iter_mut().zip(counts) {
        *b = *b + T::of(step(c) - shift);
    }
}
