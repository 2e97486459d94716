//! A burn model with a simbal-routed MoE layer, trained on a synthetic regression task under
//! each balancing method, printing the task loss and the load metrics.
//!
//! ```text
//! cargo run --release -p simbal-burn --example moe_layer
//! cargo run --release -p simbal-burn --example moe_layer --features wgpu   # also on burn's Wgpu
//! ```
//!
//! The one line that switches the balancing method is `MoeLayerConfig::with_losses` (and
//! `with_bias_update` for aux-loss-free balancing); see `methods()`.

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use simbal_burn::moe::{MoeLayer, MoeLayerConfig};
use simbal_burn::SimbalBackend;
use simbal_core::{BiasUpdateConfig, LossConfig, Result, Rng, ZLossConfig};

const N: usize = 512;
const D: usize = 16;
const HIDDEN: usize = 32;
const E: usize = 8;
const K: usize = 2;
const STEPS: usize = 300;

/// An MoE layer with a residual connection and a linear readout.
#[derive(Module, Debug)]
struct Model<B: SimbalBackend> {
    moe: MoeLayer<B>,
    head: Linear<B>,
}

impl<B: SimbalBackend> Model<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Result<(Tensor<B, 2>, Tensor<B, 1>)> {
        let out = self.moe.forward(x.clone())?;
        Ok((self.head.forward(x + out.y), out.losses.total()))
    }
}

/// The balancing methods compared, each one line of the layer's configuration.
fn methods() -> Vec<(&'static str, MoeLayerConfig)> {
    let base = MoeLayerConfig::new(D, HIDDEN, E, K);
    vec![
        // ---- the line that switches the balancing method ----
        ("SimBal", base.with_losses(LossConfig::simbal())),
        ("Switch LBL", base.with_losses(LossConfig::switch())),
        (
            "z-loss",
            base.with_losses(LossConfig::none().with_z_loss(ZLossConfig::default())),
        ),
        (
            "aux-free bias",
            base.with_losses(LossConfig::none())
                .with_bias_update(BiasUpdateConfig::default()),
        ),
        ("none", base.with_losses(LossConfig::none())),
    ]
}

/// A fixed teacher: a different nonlinear map per region of the input space.
fn data(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let mut x = vec![0f32; N * D];
    rng.fill_normal(1.0, &mut x);
    let mut w = vec![0f32; 4 * D];
    rng.fill_normal(1.0 / (D as f64).sqrt(), &mut w);
    let y = x
        .chunks(D)
        .map(|row| {
            let dot = |i: usize| -> f32 {
                row.iter()
                    .zip(&w[i * D..(i + 1) * D])
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let region = usize::from(row[0] > 0.0) + 2 * usize::from(row[1] > 0.0);
            match region {
                0 => dot(0).tanh(),
                1 => dot(1) * dot(2),
                2 => dot(2).abs() - dot(3),
                _ => (2.0 * dot(3)).sin(),
            }
        })
        .collect();
    (x, y)
}

fn run<B: AutodiffBackend + SimbalBackend>(
    backend: &str,
    device: &B::Device,
    name: &str,
    cfg: MoeLayerConfig,
) -> Result<()>
where
    B::InnerBackend: SimbalBackend,
{
    B::seed(device, 1);
    let (xh, yh) = data(3);
    let x = Tensor::<B, 2>::from_data(TensorData::new(xh, [N, D]), device);
    let target = Tensor::<B, 2>::from_data(TensorData::new(yh, [N, 1]), device);
    let mut model = Model::<B> {
        moe: cfg.init(device)?,
        head: LinearConfig::new(D, 1).init(device),
    };
    let mut optim = AdamConfig::new().init::<B, Model<B>>();
    let start = Instant::now();
    let mut first = f64::NAN;
    for step in 0..=STEPS {
        let (pred, aux) = model.forward(x.clone())?;
        let task = (pred - target.clone()).powi_scalar(2).mean();
        let task_value = task.clone().into_scalar().elem::<f64>();
        if step == 0 {
            first = task_value;
        }
        let grads = (task + aux).backward();
        if let Some(e) = model.moe.router()?.take_error()? {
            return Err(e);
        }
        if step % 100 == 0 || step == STEPS {
            let m = model.moe.router()?.load_metrics()?;
            println!(
                "{backend:>6} {name:<13} step {step:>3}  task {task_value:.4}  MaxVio {:.3}  CV {:.3}  load entropy {:.3}  dead {}",
                m.max_vio, m.cv, m.load_entropy, m.dead_experts
            );
        }
        if step == STEPS {
            println!(
                "{backend:>6} {name:<13} task loss {first:.4} -> {task_value:.4} in {:.2?}",
                start.elapsed()
            );
            break;
        }
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(3e-3, model, grads);
        model.moe.update_bias()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let device = Default::default();
    for (name, cfg) in methods() {
        run::<Autodiff<NdArray<f32>>>("ndarray", &device, name, cfg)?;
    }
    #[cfg(feature = "wgpu")]
    {
        let device = burn::backend::wgpu::WgpuDevice::default();
        for (name, cfg) in methods() {
            run::<Autodiff<burn::backend::Wgpu>>("wgpu", &device, name, cfg)?;
        }
    }
    Ok(())
}
