//! A tiny MoE model (a simbal-routed [`MoeLayer`] and a linear readout) trained with burn's Adam
//! on a fixed-seed synthetic regression task: the task loss must fall clearly under each
//! balancing method, the router weight must get a finite non-zero gradient and the router's
//! backward must report no error.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use simbal_burn::moe::{MoeLayer, MoeLayerConfig};
use simbal_burn::SimbalBackend;
use simbal_core::{BiasUpdateConfig, LossConfig, Rng};

type B = Autodiff<NdArray<f32>>;

const N: usize = 128;
const D: usize = 8;
const E: usize = 4;
const K: usize = 2;
const STEPS: usize = 40;

#[derive(Module, Debug)]
struct Model<B: SimbalBackend> {
    moe: MoeLayer<B>,
    head: Linear<B>,
}

/// Inputs `N x D` and targets `N x 1` of a fixed teacher: a mixture of two nonlinear maps
/// selected by the sign of the first coordinate (something experts can split).
fn data(device: &Device<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mut rng = Rng::new(7);
    let mut x = vec![0f32; N * D];
    rng.fill_normal(1.0, &mut x);
    let mut w = vec![0f32; 2 * D];
    rng.fill_normal(1.0 / (D as f64).sqrt(), &mut w);
    let y: Vec<f32> = x
        .chunks(D)
        .map(|row| {
            let (wa, wb) = w.split_at(D);
            let a: f32 = row.iter().zip(wa).map(|(x, w)| x * w).sum();
            let b: f32 = row.iter().zip(wb).map(|(x, w)| x * w).sum();
            if row[0] > 0.0 {
                a.tanh() + 0.5 * b
            } else {
                (b * b).min(4.0) - a
            }
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [N, D]), device),
        Tensor::from_data(TensorData::new(y, [N, 1]), device),
    )
}

/// Trains `STEPS` Adam steps; returns the first and last task losses.
fn train(cfg: MoeLayerConfig) -> (f64, f64) {
    let device = Default::default();
    B::seed(&device, 42);
    let (x, target) = data(&device);
    let mut model = Model::<B> {
        moe: cfg.init(&device).expect("layer"),
        head: LinearConfig::new(D, 1).init(&device),
    };
    let mut optim = AdamConfig::new().init::<B, Model<B>>();
    let (mut first, mut last) = (None, 0.0);
    for step in 0..STEPS {
        let out = model.moe.forward(x.clone()).expect("forward");
        let pred = model.head.forward(out.y.clone());
        let task = (pred - target.clone()).powi_scalar(2).mean();
        let task_value = f64::from(task.clone().into_scalar());
        assert!(
            task_value.is_finite(),
            "step {step}: task loss {task_value}"
        );
        first.get_or_insert(task_value);
        last = task_value;
        let grads = (task + out.losses.total()).backward();
        let gr = model
            .moe
            .router_weight
            .grad(&grads)
            .expect("router weight gradient");
        let v = gr
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("data");
        assert!(
            v.iter().all(|g| g.is_finite()),
            "step {step}: non-finite dR"
        );
        assert!(v.iter().any(|&g| g != 0.0), "step {step}: zero dR");
        let router = model.moe.router().expect("router");
        assert!(router.take_error().expect("lock").is_none());
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-2, model, grads);
        model.moe.update_bias().expect("bias update");
    }
    let metrics = model
        .moe
        .router()
        .expect("router")
        .load_metrics()
        .expect("metrics");
    assert!(metrics.max_vio.is_finite());
    (first.unwrap_or(f64::NAN), last)
}

fn assert_learns(name: &str, cfg: MoeLayerConfig) {
    let (first, last) = train(cfg);
    eprintln!("{name}: task loss {first:.4} -> {last:.4}");
    assert!(
        last < 0.7 * first,
        "{name}: task loss {first:.4} -> {last:.4} did not fall below 70%"
    );
}

fn config() -> MoeLayerConfig {
    MoeLayerConfig::new(D, 16, E, K)
}

#[test]
fn learns_with_simbal() {
    assert_learns("simbal", config().with_losses(LossConfig::simbal()));
}

#[test]
fn learns_with_switch_lbl() {
    assert_learns("switch", config().with_losses(LossConfig::switch()));
}

#[test]
fn learns_without_aux_loss() {
    assert_learns("none", config().with_losses(LossConfig::none()));
}

#[test]
fn learns_with_aux_loss_free_bias() {
    let cfg = config()
        .with_losses(LossConfig::none())
        .with_bias_update(BiasUpdateConfig::default());
    assert_learns("bias", cfg);
}

#[test]
fn valid_module_runs_without_graph() {
    let device = Default::default();
    let model = config().init::<B>(&device).expect("layer");
    let (x, _) = data(&device);
    let inner = burn::module::AutodiffModule::valid(&model);
    let out = inner.forward(x.inner()).expect("valid forward");
    assert_eq!(out.y.dims(), [N, D]);
    // A wrong width is an error, not a panic.
    let bad = Tensor::<NdArray<f32>, 2>::zeros([4, D + 1], &device);
    assert!(inner.forward(bad).is_err());
}

#[test]
fn output_matches_dense_reference_and_reaches_experts() {
    let device = Default::default();
    let layer = config().init::<B>(&device).expect("layer");
    let (x, _) = data(&device);
    let out = layer.forward(x.clone()).expect("forward");
    // Dense reference: every expert on every token, weighted by its gate where chosen.
    let mut want = Tensor::<B, 2>::zeros([N, D], &device);
    for (e, expert) in layer.experts.iter().enumerate() {
        let h = expert.forward(x.clone());
        for j in 0..K {
            let chosen = out
                .router
                .indices
                .clone()
                .slice([0..N, j..j + 1])
                .equal_elem(e as i64)
                .float();
            let g = out.router.gates.clone().slice([0..N, j..j + 1]);
            want = want + h.clone() * (chosen * g);
        }
    }
    let diff = (out.y.clone() - want).abs().max().into_scalar();
    assert!(
        diff < 1e-5,
        "MoE output differs from the dense reference by {diff}"
    );
    // Gradients reach every expert that got tokens, and the gates (so R).
    let grads = out.y.powi_scalar(2).sum().backward();
    let counts = out
        .router
        .counts
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("counts");
    for (e, expert) in layer.experts.iter().enumerate() {
        let g = expert.fc1.weight.grad(&grads);
        if counts[e] > 0 {
            let g = g.expect("expert gradient").abs().sum().into_scalar();
            assert!(g > 0.0 && g.is_finite(), "expert {e}: gradient {g}");
        }
    }
    assert!(layer.router_weight.grad(&grads).is_some());
    assert!(x.grad(&grads).is_none(), "x did not require a gradient");
}
