//! The summary table (mean ± std over seeds), the CSV of every logged point and the JSON of
//! everything.

use crate::error::{io_err, ReproError, Result};
use crate::methods::{Coefficients, InitPolicy, Method};
use crate::metrics::{LogPoint, RunLog};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Mean, sample standard deviation and count of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl Stat {
    /// Statistics of `values` (`None` if empty).
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }

    fn fmt(s: Option<Stat>, digits: usize) -> String {
        match s {
            Some(s) => format!("{:.*} ± {:.*}", digits, s.mean, digits, s.std),
            None => "n/a".to_string(),
        }
    }
}

/// One method's row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodSummary {
    /// Method name.
    pub method: String,
    /// What it does, coefficients and initialisation.
    pub description: String,
    /// Runs (seeds).
    pub runs: usize,
    /// Final validation loss.
    pub final_val_loss: Option<Stat>,
    /// Lowest validation loss over the logged points (differs from the final one when a run
    /// overfits, as on a small text file).
    pub best_val_loss: Option<Stat>,
    /// Training tokens until the validation loss first reaches the same seed's Switch run's final
    /// validation loss (linear interpolation between logged points), over the runs that reach it.
    pub tokens_to_switch_final: Option<Stat>,
    /// Runs that reach the Switch run's final validation loss.
    pub reached: usize,
    /// Speed-up over Switch: Switch's tokens to its own final loss over this method's, per seed.
    pub speedup_vs_switch: Option<Stat>,
    /// Lowest PES over the logged points after initialisation.
    pub min_pes: Option<Stat>,
    /// PES at the end.
    pub final_pes: Option<Stat>,
    /// Validation MaxVio at the end.
    pub final_max_vio: Option<Stat>,
    /// Mean training-batch MaxVio over the second half of training.
    pub train_max_vio: Option<Stat>,
    /// SEU at the end.
    pub final_seu: Option<Stat>,
    /// Dead experts at the end.
    pub final_dead: Option<Stat>,
    /// Routing consistency at the end (synthetic task: agreement with the cluster's most common
    /// expert; language model: the layers' mean agreement with the previous evaluation).
    pub final_consistency: Option<Stat>,
    /// Routing consistency averaged over the second half of training.
    pub late_consistency: Option<Stat>,
    /// `max |R^T R - I|` at the end.
    pub final_orth_max: Option<Stat>,
    /// Wall-clock seconds per run.
    pub wall_secs: Option<Stat>,
}

/// First number of tokens at which `points` reach `target` (linear interpolation).
pub fn tokens_to_reach(points: &[LogPoint], target: f64) -> Option<f64> {
    let first = points.first()?;
    if first.val_loss <= target {
        return Some(first.tokens as f64);
    }
    for w in points.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.val_loss <= target {
            let frac = if a.val_loss > b.val_loss {
                (a.val_loss - target) / (a.val_loss - b.val_loss)
            } else {
                1.0
            };
            return Some(a.tokens as f64 + frac * (b.tokens as f64 - a.tokens as f64));
        }
    }
    None
}

/// Summarises the runs, one row per method in `methods` order.
pub fn summarize(
    runs: &[RunLog],
    methods: &[Method],
    coefs: &Coefficients,
    init: InitPolicy,
) -> Vec<MethodSummary> {
    let switch_final = |seed: u64| {
        runs.iter()
            .find(|r| r.method == Method::Switch.name() && r.seed == seed)
            .and_then(|r| r.last().map(|p| p.val_loss))
    };
    let switch_tokens = |seed: u64| {
        let r = runs
            .iter()
            .find(|r| r.method == Method::Switch.name() && r.seed == seed)?;
        tokens_to_reach(&r.points, switch_final(seed)?)
    };
    methods
        .iter()
        .map(|&m| {
            let mine: Vec<&RunLog> = runs.iter().filter(|r| r.method == m.name()).collect();
            let finals: Vec<&LogPoint> = mine.iter().filter_map(|r| r.last()).collect();
            let collect = |f: &dyn Fn(&LogPoint) -> Option<f64>| {
                Stat::of(&finals.iter().filter_map(|p| f(p)).collect::<Vec<_>>())
            };
            let mut reach = Vec::new();
            let mut speed = Vec::new();
            for r in &mine {
                if let Some(target) = switch_final(r.seed) {
                    if let Some(t) = tokens_to_reach(&r.points, target) {
                        reach.push(t);
                        if let Some(ts) = switch_tokens(r.seed) {
                            if t > 0.0 {
                                speed.push(ts / t);
                            }
                        }
                    }
                }
            }
            let min_pes: Vec<f64> = mine
                .iter()
                .filter_map(|r| {
                    // Step 0 is excluded: random experts have PES ~ 0 by construction.
                    r.points
                        .iter()
                        .filter(|p| p.step > 0)
                        .map(|p| p.pes)
                        .reduce(f64::min)
                })
                .collect();
            let train_vio: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.late_mean(|p| p.max_vio_train))
                .collect();
            let late_consistency: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.late_mean(|p| p.consistency))
                .collect();
            let walls: Vec<f64> = mine.iter().map(|r| r.wall_secs).collect();
            MethodSummary {
                method: m.name().to_string(),
                description: m.describe(coefs, init),
                runs: mine.len(),
                final_val_loss: collect(&|p| Some(p.val_loss)),
                best_val_loss: Stat::of(
                    &mine
                        .iter()
                        .filter_map(|r| r.points.iter().map(|p| p.val_loss).reduce(f64::min))
                        .collect::<Vec<_>>(),
                ),
                tokens_to_switch_final: Stat::of(&reach),
                reached: reach.len(),
                speedup_vs_switch: Stat::of(&speed),
                min_pes: Stat::of(&min_pes),
                final_pes: collect(&|p| Some(p.pes)),
                final_max_vio: collect(&|p| Some(p.max_vio)),
                train_max_vio: Stat::of(&train_vio),
                final_seu: collect(&|p| Some(p.seu)),
                final_dead: collect(&|p| Some(p.dead_experts as f64)),
                final_consistency: collect(&|p| p.consistency),
                late_consistency: Stat::of(&late_consistency),
                final_orth_max: collect(&|p| Some(p.orth_max)),
                wall_secs: Stat::of(&walls),
            }
        })
        .collect()
}

/// The summary as a Markdown table, followed by the method descriptions.
pub fn markdown_table(rows: &[MethodSummary], loss_name: &str) -> String {
    let with_consistency = rows.iter().any(|r| r.final_consistency.is_some());
    let mut s = String::new();
    let _ = write!(
        s,
        "| method | final val {loss_name} | best val | tokens to Switch's final loss | speed-up vs Switch | min PES | final PES | MaxVio (val) | MaxVio (train) | SEU | dead |"
    );
    if with_consistency {
        s.push_str(" consistency | consistency, 2nd half |");
    }
    s.push_str(" max abs(RᵀR−I) |\n|---|---|---|---|---|---|---|---|---|---|---|");
    if with_consistency {
        s.push_str("---|---|");
    }
    s.push_str("---|\n");
    for r in rows {
        let tokens = match r.tokens_to_switch_final {
            Some(t) => format!(
                "{:.0}k ± {:.0}k ({}/{})",
                t.mean / 1e3,
                t.std / 1e3,
                r.reached,
                r.runs
            ),
            None => format!("not reached (0/{})", r.runs),
        };
        let speed = match r.speedup_vs_switch {
            Some(sp) => format!("{:.2}× ± {:.2}", sp.mean, sp.std),
            None => "n/a".into(),
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.method,
            Stat::fmt(r.final_val_loss, 4),
            Stat::fmt(r.best_val_loss, 4),
            tokens,
            speed,
            Stat::fmt(r.min_pes, 3),
            Stat::fmt(r.final_pes, 3),
            Stat::fmt(r.final_max_vio, 2),
            Stat::fmt(r.train_max_vio, 2),
            Stat::fmt(r.final_seu, 3),
            Stat::fmt(r.final_dead, 1),
        );
        if with_consistency {
            let _ = write!(
                s,
                " {} | {} |",
                Stat::fmt(r.final_consistency, 3),
                Stat::fmt(r.late_consistency, 3)
            );
        }
        let _ = writeln!(s, " {} |", Stat::fmt(r.final_orth_max, 3));
    }
    s.push('\n');
    for r in rows {
        let _ = writeln!(s, "- `{}`: {}", r.method, r.description);
    }
    s
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// Every logged point of every run as CSV.
pub fn csv(runs: &[RunLog]) -> String {
    let mut s = String::from(
        "method,seed,init,step,tokens,train_loss,val_loss,max_vio,max_vio_train,cv,load_entropy,dead_experts,seu,pes,orth_mean_sq,orth_max,routing_entropy,consistency,aux_simbal,aux_lbl\n",
    );
    for r in runs {
        for p in &r.points {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.method,
                r.seed,
                r.init,
                p.step,
                p.tokens,
                opt(p.train_loss),
                p.val_loss,
                p.max_vio,
                opt(p.max_vio_train),
                p.cv,
                p.load_entropy,
                p.dead_experts,
                p.seu,
                p.pes,
                p.orth_mean_sq,
                p.orth_max,
                p.routing_entropy,
                opt(p.consistency),
                p.aux_simbal,
                p.aux_lbl
            );
        }
    }
    s
}

/// Everything, as one JSON document.
#[derive(Debug, Serialize)]
pub struct Results<'a, C: Serialize> {
    /// The experiment's configuration.
    pub config: &'a C,
    /// The summary rows.
    pub summary: &'a [MethodSummary],
    /// Per-layer summary rows (models with several MoE layers).
    pub layers: &'a [crate::layers::LayerSummary],
    /// Every run with every logged point.
    pub runs: &'a [RunLog],
}

/// Writes `contents` to `path`.
pub fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(io_err(path))
}

/// Serialises `results` to pretty JSON.
pub fn json<C: Serialize>(results: &Results<'_, C>) -> Result<String> {
    serde_json::to_string_pretty(results).map_err(|e| ReproError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(tokens: usize, val_loss: f64) -> LogPoint {
        LogPoint {
            step: tokens,
            tokens,
            val_loss,
            load_entropy: 1.0,
            seu: 0.5,
            pes: 0.1,
            routing_entropy: 1.0,
            ..LogPoint::default()
        }
    }

    #[test]
    fn tokens_to_reach_interpolates_the_first_crossing() {
        let pts = [
            point(0, 1.0),
            point(100, 0.6),
            point(200, 0.2),
            point(300, 0.1),
        ];
        assert_eq!(tokens_to_reach(&pts, 0.4), Some(150.0));
        assert_eq!(tokens_to_reach(&pts, 0.1), Some(300.0));
        assert_eq!(tokens_to_reach(&pts, 0.05), None);
        assert_eq!(tokens_to_reach(&pts, 2.0), Some(0.0));
    }

    #[test]
    fn speedup_is_switch_tokens_over_method_tokens_per_seed() {
        let run = |m: Method, pts: Vec<LogPoint>| RunLog {
            method: m.name().into(),
            seed: 0,
            init: "gaussian".into(),
            backend: "test".into(),
            points: pts,
            wall_secs: 1.0,
        };
        let runs = vec![
            run(
                Method::Switch,
                vec![point(0, 1.0), point(100, 0.5), point(200, 0.4)],
            ),
            run(
                Method::SimBal,
                vec![point(0, 1.0), point(100, 0.4), point(200, 0.3)],
            ),
            run(
                Method::None,
                vec![point(0, 1.0), point(100, 0.9), point(200, 0.8)],
            ),
        ];
        let rows = summarize(
            &runs,
            &[Method::Switch, Method::SimBal, Method::None],
            &Coefficients::default(),
            InitPolicy::Paper,
        );
        assert_eq!(rows[0].speedup_vs_switch.map(|s| s.mean), Some(1.0));
        assert_eq!(rows[1].tokens_to_switch_final.map(|s| s.mean), Some(100.0));
        assert_eq!(rows[1].speedup_vs_switch.map(|s| s.mean), Some(2.0));
        assert_eq!(rows[2].reached, 0);
        assert!(rows[2].speedup_vs_switch.is_none());
        let table = markdown_table(&rows, "loss");
        assert!(table.contains("| simbal |") && table.contains("2.00×"));
    }

    #[test]
    fn stat_uses_the_sample_std() {
        let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
        assert!(Stat::of(&[]).is_none());
    }
}
