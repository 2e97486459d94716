//! What is logged along training, and the metrics simbal-core does not provide (routing
//! consistency per cluster).

use serde::Serialize;

/// One logged point of a run: training loss since the previous point and metrics on the fixed
/// validation sample.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LogPoint {
    /// Optimiser steps taken.
    pub step: usize,
    /// Training tokens seen.
    pub tokens: usize,
    /// Mean task loss of the training batches since the previous point (`None` at step 0).
    pub train_loss: Option<f64>,
    /// Task loss on the validation sample.
    pub val_loss: f64,
    /// MaxVio of the validation sample's routing (`max_e c_e / mean(c) - 1`).
    pub max_vio: f64,
    /// Mean MaxVio of the training batches since the previous point.
    pub max_vio_train: Option<f64>,
    /// Coefficient of variation of the validation load.
    pub cv: f64,
    /// Normalised load entropy of the validation load.
    pub load_entropy: f64,
    /// Experts that got no validation token.
    pub dead_experts: usize,
    /// SEU: per validation sequence, the fraction of experts used; averaged.
    pub seu: f64,
    /// PES on the PES sample (every expert on every token).
    pub pes: f64,
    /// `mean_ab G_ab^2`, `G = R^T R - I`.
    pub orth_mean_sq: f64,
    /// `max_ab |G_ab|`.
    pub orth_max: f64,
    /// Mean per-token routing entropy on the validation sample (nats).
    pub routing_entropy: f64,
    /// Synthetic task: fraction of validation tokens whose top-1 expert is their cluster's most
    /// common top-1 expert.
    pub consistency: Option<f64>,
    /// SimBal value of the last training step (0 when not used).
    pub aux_simbal: f64,
    /// LBL value of the last training step (0 when not used).
    pub aux_lbl: f64,
    /// Per MoE layer, for models with several (the language model); the fields above are then
    /// the layers' means (dead experts: their sum).
    pub layers: Vec<LayerPoint>,
}

/// One MoE layer's metrics at a logged point.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LayerPoint {
    /// MaxVio of the validation routing.
    pub max_vio: f64,
    /// Mean MaxVio of the training batches since the previous point.
    pub max_vio_train: Option<f64>,
    /// Normalised load entropy of the validation load.
    pub load_entropy: f64,
    /// Experts that got no validation token.
    pub dead_experts: usize,
    /// SEU over the validation windows.
    pub seu: f64,
    /// PES of the layer's experts on its validation inputs.
    pub pes: f64,
    /// Fraction of validation tokens whose top-1 expert is the one of the previous evaluation
    /// (`None` at the first).
    pub consistency: Option<f64>,
    /// `max_ab |G_ab|`, `G = R^T R - I`.
    pub orth_max: f64,
}

/// A whole run: one method, one seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunLog {
    /// Method name.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Router initialisation (`"orthogonal"` or `"gaussian"`).
    pub init: String,
    /// Backend name.
    pub backend: String,
    /// Logged points, step 0 first.
    pub points: Vec<LogPoint>,
    /// Wall-clock seconds of the run.
    pub wall_secs: f64,
}

impl RunLog {
    /// The log of a finished run of `spec` on `backend`.
    pub fn of(
        spec: &crate::train::RunSpec,
        backend: String,
        points: Vec<LogPoint>,
        wall_secs: f64,
    ) -> Self {
        let init = if spec.method.orthogonal_init(spec.init) {
            "orthogonal"
        } else {
            "gaussian"
        };
        Self {
            method: spec.method.name().to_string(),
            seed: spec.seed,
            init: init.to_string(),
            backend,
            points,
            wall_secs,
        }
    }

    /// Mean of `f` over the second half of the logged points, where it is defined (`None` when
    /// it is nowhere).
    pub fn late_mean(&self, f: impl Fn(&LogPoint) -> Option<f64>) -> Option<f64> {
        let half = &self.points[self.points.len() / 2..];
        let (sum, n) = half
            .iter()
            .filter_map(f)
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    }

    /// The last logged point.
    pub fn last(&self) -> Option<&LogPoint> {
        self.points.last()
    }
}

/// Routing consistency: the fraction of tokens whose top-1 expert is the most common top-1
/// expert of their cluster. `idx` is `n x k` (best first), `cluster` has `n` entries.
/// `None` when there are no tokens or the lengths do not match.
pub fn routing_consistency(k: usize, experts: usize, idx: &[u32], cluster: &[u32]) -> Option<f64> {
    let n = cluster.len();
    if n == 0 || k == 0 || idx.len() != n * k {
        return None;
    }
    let clusters = cluster.iter().copied().max()? as usize + 1;
    let mut counts = vec![0u64; clusters * experts];
    for (t, &c) in cluster.iter().enumerate() {
        let e = idx[t * k] as usize;
        if e < experts {
            counts[c as usize * experts + e] += 1;
        }
    }
    let agree: u64 = counts
        .chunks_exact(experts)
        .map(|row| row.iter().copied().max().unwrap_or(0))
        .sum();
    Some(agree as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_counts_agreement_with_the_clusters_mode() {
        // k = 2; top-1 experts: cluster 0 -> 1, 1, 2; cluster 1 -> 0.
        let idx = [1, 0, 1, 3, 2, 1, 0, 2];
        let cluster = [0, 0, 0, 1];
        let c = routing_consistency(2, 4, &idx, &cluster).unwrap();
        assert!((c - 0.75).abs() < 1e-12);
        assert_eq!(routing_consistency(2, 4, &idx[..6], &cluster), None);
    }
}
