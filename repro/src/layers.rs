//! Per-layer results of models with several MoE layers (the language model): a summary row per
//! method and layer, and a CSV of every layer at every logged point.

use crate::methods::Method;
use crate::metrics::{LayerPoint, RunLog};
use crate::report::Stat;
use serde::Serialize;
use std::fmt::Write as _;

/// One method's one layer, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSummary {
    /// Method name.
    pub method: String,
    /// Layer, from the input side (0).
    pub layer: usize,
    /// Lowest PES over the logged points after initialisation.
    pub min_pes: Option<Stat>,
    /// PES at the end.
    pub final_pes: Option<Stat>,
    /// Validation MaxVio at the end.
    pub final_max_vio: Option<Stat>,
    /// Mean training-batch MaxVio over the second half of training.
    pub train_max_vio: Option<Stat>,
    /// Dead experts at the end.
    pub final_dead: Option<Stat>,
    /// SEU at the end.
    pub final_seu: Option<Stat>,
    /// Routing consistency averaged over the second half of training.
    pub late_consistency: Option<Stat>,
    /// `max |R^T R - I|` at the end.
    pub final_orth_max: Option<Stat>,
}

/// Mean over the second half of a run's points of layer `layer`'s `f` (where defined).
fn late_mean(r: &RunLog, layer: usize, f: fn(&LayerPoint) -> Option<f64>) -> Option<f64> {
    r.late_mean(|p| p.layers.get(layer).and_then(f))
}

/// One row per method (in `methods` order) and layer; empty when no run logged layers.
pub fn summarize_layers(runs: &[RunLog], methods: &[Method]) -> Vec<LayerSummary> {
    let layers = runs
        .iter()
        .filter_map(|r| r.last().map(|p| p.layers.len()))
        .max()
        .unwrap_or(0);
    let mut rows = Vec::new();
    for m in methods {
        let mine: Vec<&RunLog> = runs.iter().filter(|r| r.method == m.name()).collect();
        for layer in 0..layers {
            let fin = |f: fn(&LayerPoint) -> f64| {
                let v: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.last().and_then(|p| p.layers.get(layer)).map(f))
                    .collect();
                Stat::of(&v)
            };
            let over = |g: &dyn Fn(&RunLog) -> Option<f64>| {
                Stat::of(&mine.iter().filter_map(|r| g(r)).collect::<Vec<_>>())
            };
            rows.push(LayerSummary {
                method: m.name().to_string(),
                layer,
                min_pes: over(&|r| {
                    r.points
                        .iter()
                        .filter(|p| p.step > 0)
                        .filter_map(|p| p.layers.get(layer).map(|l| l.pes))
                        .reduce(f64::min)
                }),
                final_pes: fin(|l| l.pes),
                final_max_vio: fin(|l| l.max_vio),
                train_max_vio: over(&|r| late_mean(r, layer, |l| l.max_vio_train)),
                final_dead: fin(|l| l.dead_experts as f64),
                final_seu: fin(|l| l.seu),
                late_consistency: over(&|r| late_mean(r, layer, |l| l.consistency)),
                final_orth_max: fin(|l| l.orth_max),
            });
        }
    }
    rows
}

fn fmt(s: Option<Stat>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.*} ± {:.*}", digits, s.mean, digits, s.std),
        None => "n/a".to_string(),
    }
}

/// The per-layer rows as a Markdown table.
pub fn markdown_table(rows: &[LayerSummary]) -> String {
    let mut s = String::from(
        "| method | layer | min PES | final PES | MaxVio (val) | MaxVio (train) | dead | SEU | consistency, 2nd half | max abs(RᵀR−I) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.method,
            r.layer,
            fmt(r.min_pes, 3),
            fmt(r.final_pes, 3),
            fmt(r.final_max_vio, 2),
            fmt(r.train_max_vio, 2),
            fmt(r.final_dead, 1),
            fmt(r.final_seu, 3),
            fmt(r.late_consistency, 3),
            fmt(r.final_orth_max, 3),
        );
    }
    s
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// Every layer of every logged point as CSV.
pub fn csv(runs: &[RunLog]) -> String {
    let mut s = String::from(
        "method,seed,step,tokens,layer,max_vio,max_vio_train,load_entropy,dead_experts,seu,pes,consistency,orth_max\n",
    );
    for r in runs {
        for p in &r.points {
            for (l, lp) in p.layers.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.method,
                    r.seed,
                    p.step,
                    p.tokens,
                    l,
                    lp.max_vio,
                    opt(lp.max_vio_train),
                    lp.load_entropy,
                    lp.dead_experts,
                    lp.seu,
                    lp.pes,
                    opt(lp.consistency),
                    lp.orth_max
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LogPoint;

    fn run(method: &str, pes: [f64; 3]) -> RunLog {
        let points = pes
            .iter()
            .enumerate()
            .map(|(i, &p)| LogPoint {
                step: i,
                tokens: i * 10,
                layers: vec![
                    LayerPoint {
                        pes: p,
                        consistency: (i > 0).then_some(0.5),
                        ..LayerPoint::default()
                    },
                    LayerPoint {
                        pes: 2.0 * p,
                        ..LayerPoint::default()
                    },
                ],
                ..LogPoint::default()
            })
            .collect();
        RunLog {
            method: method.into(),
            seed: 0,
            init: "gaussian".into(),
            backend: "test".into(),
            points,
            wall_secs: 1.0,
        }
    }

    #[test]
    fn rows_per_method_and_layer_skip_step_zero_for_min_pes() {
        let runs = [
            run("switch", [0.0, 0.3, 0.2]),
            run("simbal", [0.0, 0.1, 0.4]),
        ];
        let rows = summarize_layers(&runs, &[Method::Switch, Method::SimBal]);
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].method.as_str(), rows[0].layer), ("switch", 0));
        assert_eq!(rows[0].min_pes.map(|s| s.mean), Some(0.2));
        assert_eq!(rows[1].final_pes.map(|s| s.mean), Some(0.4));
        assert_eq!(rows[2].min_pes.map(|s| s.mean), Some(0.1));
        assert_eq!(rows[0].late_consistency.map(|s| s.mean), Some(0.5));
        assert!(rows[1].late_consistency.is_none());
        let table = markdown_table(&rows);
        assert_eq!(table.lines().count(), 2 + 4);
        let csv = csv(&runs);
        assert_eq!(csv.lines().count(), 1 + 2 * 3 * 2);
        assert!(csv.contains("simbal,0,1,10,0,"));
    }

    #[test]
    fn no_layers_no_rows() {
        let mut r = run("switch", [0.0, 0.1, 0.2]);
        r.points.iter_mut().for_each(|p| p.layers.clear());
        assert!(summarize_layers(&[r], &[Method::Switch]).is_empty());
    }
}
