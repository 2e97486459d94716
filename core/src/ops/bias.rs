//! Aux-loss-free bias balancing (DeepSeek-V3): no gradient, the selection bias moves towards
//! balance, `b_e += u * sign(mean(c) - c_e)`; the centred option subtracts the mean update.

use crate::config::BiasUpdateConfig;
use crate::scalar::Scalar;

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
