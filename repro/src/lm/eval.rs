//! Evaluation on fixed validation windows: bits per byte and, per MoE layer, load (MaxVio, dead
//! experts), SEU, PES, routing consistency between consecutive evaluations, and the router's
//! orthogonality error.

use crate::error::{ReproError, Result};
use crate::lm::model::{cross_entropy, MoeLm};
use crate::lm::train::{counts_of, int_tensor, mean, LmTrainConfig};
use crate::metrics::{LayerPoint, LogPoint};
use burn::tensor::{ElementConversion, Int, Tensor};
use simbal_burn::SimbalBackend;
use simbal_core::{orthogonality_error, pes, seu, LoadMetrics, WeightLayout};

/// Fixed validation windows and what the previous evaluation routed.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// Inputs, `windows x T` bytes.
    x: Vec<i64>,
    /// Next bytes.
    y: Vec<i64>,
    windows: usize,
    t: usize,
    chunk: usize,
    pes_tokens: usize,
    /// Per layer: each validation token's top-1 expert at the previous evaluation.
    prev_top1: Vec<Vec<u32>>,
}

impl Evaluator {
    /// `cfg.val_windows` windows of `T + 1` bytes evenly spaced over `val`.
    ///
    /// # Errors
    /// [`ReproError::Config`] when `val` is shorter than one window.
    pub fn new(val: &[u8], cfg: &LmTrainConfig) -> Result<Self> {
        let t = cfg.shape.seq_len;
        if val.len() < t + 1 {
            return Err(ReproError::Config(format!(
                "validation text of {} bytes is shorter than a window of {}",
                val.len(),
                t + 1
            )));
        }
        let windows = cfg.val_windows;
        let span = val.len() - t - 1;
        let (mut x, mut y) = (
            Vec::with_capacity(windows * t),
            Vec::with_capacity(windows * t),
        );
        for w in 0..windows {
            let s = if windows > 1 {
                w * span / (windows - 1)
            } else {
                0
            };
            x.extend(val[s..s + t].iter().map(|&b| i64::from(b)));
            y.extend(val[s + 1..s + t + 1].iter().map(|&b| i64::from(b)));
        }
        Ok(Self {
            x,
            y,
            windows,
            t,
            chunk: cfg.val_chunk,
            pes_tokens: cfg.pes_tokens,
            prev_top1: Vec::new(),
        })
    }

    /// Validation tokens.
    pub fn tokens(&self) -> usize {
        self.windows * self.t
    }

    /// Evaluates `model` (no autodiff): the validation loss in bits per byte and the per-layer
    /// metrics, their means over layers in the point's own fields. Step and tokens are the
    /// caller's.
    ///
    /// # Errors
    /// The model's; reading results back.
    pub fn point<B: SimbalBackend>(
        &mut self,
        model: &MoeLm<B>,
        device: &B::Device,
    ) -> Result<LogPoint> {
        let layers = model.blocks.len();
        let e = model
            .blocks
            .first()
            .map(|b| b.moe.experts.len())
            .unwrap_or(0);
        let n = self.tokens();
        let mut ce_sum = 0.0;
        let mut counts = vec![vec![0u64; e]; layers];
        let mut top: Vec<Vec<u32>> = vec![Vec::new(); layers];
        let mut pes_at = vec![0.0; layers];
        let mut k = 1;
        let mut w0 = 0;
        while w0 < self.windows {
            let w1 = (w0 + self.chunk).min(self.windows);
            let rows = (w1 - w0) * self.t;
            let x = int_tensor::<B, 2>(
                self.x[w0 * self.t..w1 * self.t].to_vec(),
                [w1 - w0, self.t],
                device,
            );
            let y = int_tensor::<B, 1>(self.y[w0 * self.t..w1 * self.t].to_vec(), [rows], device);
            let out = model.forward(x, w0 == 0)?;
            ce_sum += cross_entropy(out.logits, y).into_scalar().elem::<f64>() * rows as f64;
            for (l, trace) in out.layers.iter().enumerate() {
                k = trace.router.shape.k;
                for (c, add) in counts[l]
                    .iter_mut()
                    .zip(counts_of(trace.router.counts.clone())?)
                {
                    *c += add;
                }
                top[l].extend(host_u32(trace.router.indices.clone())?);
                if let Some(h) = &trace.input {
                    pes_at[l] = layer_pes(model, l, h.clone(), self.pes_tokens.min(rows))?;
                }
            }
            w0 = w1;
        }
        let mut per_layer = Vec::with_capacity(layers);
        for l in 0..layers {
            let load = LoadMetrics::from_counts(&counts[l]);
            let top1: Vec<u32> = top[l].iter().step_by(k).copied().collect();
            let consistency = self.prev_top1.get(l).map(|prev| {
                let same = prev.iter().zip(&top1).filter(|(a, b)| a == b).count();
                same as f64 / top1.len().max(1) as f64
            });
            let seu = seu(n, k, e, self.t, &top[l], None)?;
            let r = host_f64(model.blocks[l].moe.router_weight.val())?;
            let d = r.len() / e.max(1);
            let (_, orth_max) = orthogonality_error(WeightLayout::DxE, d, e, &r)?;
            per_layer.push(LayerPoint {
                max_vio: load.max_vio,
                max_vio_train: None,
                load_entropy: load.load_entropy,
                dead_experts: load.dead_experts,
                seu,
                pes: pes_at[l],
                consistency,
                orth_max,
            });
            if self.prev_top1.len() <= l {
                self.prev_top1.push(Vec::new());
            }
            self.prev_top1[l] = top1;
        }
        let avg = |f: fn(&LayerPoint) -> f64| mean(per_layer.iter().map(f)).unwrap_or(f64::NAN);
        Ok(LogPoint {
            val_loss: ce_sum / n as f64 / std::f64::consts::LN_2,
            max_vio: avg(|l| l.max_vio),
            load_entropy: avg(|l| l.load_entropy),
            dead_experts: per_layer.iter().map(|l| l.dead_experts).sum(),
            seu: avg(|l| l.seu),
            pes: avg(|l| l.pes),
            orth_max: avg(|l| l.orth_max),
            consistency: mean(per_layer.iter().filter_map(|l| l.consistency)),
            layers: per_layer,
            ..LogPoint::default()
        })
    }
}

/// PES of layer `l`'s experts on the first `n` rows of its input `h`.
fn layer_pes<B: SimbalBackend>(
    model: &MoeLm<B>,
    l: usize,
    h: Tensor<B, 2>,
    n: usize,
) -> Result<f64> {
    let [_, d] = h.dims();
    let h = h.slice(0..n);
    let experts = &model.blocks[l].moe.experts;
    let mut outs = Vec::with_capacity(experts.len() * n * d);
    for ex in experts {
        outs.extend(host_f64(ex.forward(h.clone()))?);
    }
    Ok(pes(experts.len(), n, d, &outs)?)
}

fn host_f64<B: SimbalBackend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f64>> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| ReproError::Config(format!("reading a tensor: {e:?}")))
}

fn host_u32<B: SimbalBackend, const D: usize>(t: Tensor<B, D, Int>) -> Result<Vec<u32>> {
    let v = t
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| ReproError::Config(format!("reading indices: {e:?}")))?;
    Ok(v.into_iter()
        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect())
}
