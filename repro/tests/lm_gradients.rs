//! End-to-end gradient check of the language model: burn's autodiff through embeddings,
//! attention, norms, experts and read-out, simbal's analytic router gradients (SimBal L1,
//! Switch LBL and z-loss all on), against central finite differences of the whole loss, in f64.
//!
//! Its own test binary: `NdArray<f32>` and `<f64>` share one device whose default float type
//! the first tensor fixes, so this process sets it to f64 first.

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{set_default_dtypes, Device, FloatDType, IntDType, Tensor, TensorData};
use simbal_core::{LblConfig, LossConfig, SimBalConfig, SimBalNorm, ZLossConfig};
use simbal_repro::lm::model::{cross_entropy, LmShape, MoeLm, RouterSetup};
use simbal_repro::lm::train::int_tensor;

type B = Autodiff<NdArray<f64>>;

const SHAPE: LmShape = LmShape {
    vocab: 16,
    seq_len: 6,
    d_model: 8,
    heads: 2,
    layers: 2,
    experts: 4,
    k: 2,
    expert_hidden: 8,
};
const BATCH: usize = 3;
const EPS: f64 = 1e-5;

fn device() -> Device<B> {
    let device = Default::default();
    // Fails harmlessly if this process already fixed it (to f64, by this very call).
    let _ = set_default_dtypes::<NdArray<f64>>(&device, FloatDType::F64, IntDType::I64);
    device
}

fn data(device: &Device<B>) -> (Vec<i64>, Vec<i64>) {
    let x: Vec<i64> = (0..BATCH * SHAPE.seq_len)
        .map(|i| ((i * 7 + 3) % 16) as i64)
        .collect();
    let y: Vec<i64> = (0..BATCH * SHAPE.seq_len)
        .map(|i| ((i * 5 + 1) % 16) as i64)
        .collect();
    let _ = device;
    (x, y)
}

/// The loss and every layer's routing (to see whether a perturbation changed it).
fn loss(model: &MoeLm<B>, device: &Device<B>) -> (Tensor<B, 1>, Vec<Vec<i64>>) {
    let (x, y) = data(device);
    let x = int_tensor::<B, 2>(x, [BATCH, SHAPE.seq_len], device);
    let y = int_tensor::<B, 1>(y, [BATCH * SHAPE.seq_len], device);
    let out = model.forward(x, false).expect("forward");
    let routing = out
        .layers
        .iter()
        .map(|l| {
            l.router
                .indices
                .clone()
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .expect("indices")
        })
        .collect();
    (cross_entropy(out.logits, y) + out.aux, routing)
}

fn value(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("loss")[0]
}

type Pick = fn(&mut MoeLm<B>) -> &mut Param<Tensor<B, 2>>;

fn host(p: &Param<Tensor<B, 2>>) -> (Vec<f64>, [usize; 2]) {
    let t = p.val();
    let dims = t.dims();
    (
        t.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .expect("param"),
        dims,
    )
}

fn set(p: &mut Param<Tensor<B, 2>>, v: Vec<f64>, dims: [usize; 2], device: &Device<B>) {
    let t =
        Tensor::<B, 2>::from_data(TensorData::new(v, dims).convert::<f64>(), device).require_grad();
    *p = Param::initialized(p.id, t);
}

#[test]
fn model_gradients_match_finite_differences() {
    let device = device();
    B::seed(&device, 3);
    let setup = RouterSetup {
        losses: LossConfig::none()
            .with_lbl(LblConfig {
                alpha: 0.05,
                ..LblConfig::default()
            })
            .with_simbal(SimBalConfig {
                lambda: 0.1,
                norm: SimBalNorm::L1,
            })
            .with_z_loss(ZLossConfig { beta: 1e-2 }),
        bias_update: None,
        orthogonal: false,
        seed: 0,
    };
    let mut model = MoeLm::<B>::new(&SHAPE, &setup, &device).expect("model");
    let picks: [(&str, Pick); 8] = [
        ("router 0", |m| &mut m.blocks[0].moe.router_weight),
        ("router 1", |m| &mut m.blocks[1].moe.router_weight),
        ("expert 0 of layer 0, fc1", |m| {
            &mut m.blocks[0].moe.experts[0].fc1.weight
        }),
        ("expert 3 of layer 1, fc2", |m| {
            &mut m.blocks[1].moe.experts[3].fc2.weight
        }),
        ("attention query, layer 1", |m| {
            &mut m.blocks[1].attn.query.weight
        }),
        ("byte embedding", |m| &mut m.embed.weight),
        ("positions", |m| &mut m.pos.weight),
        ("read-out", |m| &mut m.head.weight),
    ];
    let (base, base_routing) = loss(&model, &device);
    let grads = base.backward();
    let (mut checked, mut skipped, mut worst) = (0usize, 0usize, 0f64);
    for (name, pick) in picks {
        let analytic = {
            let p = pick(&mut model);
            let g = p
                .grad(&grads)
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            g.into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .expect("grad")
        };
        assert!(
            analytic.iter().any(|g| *g != 0.0),
            "{name}: gradient all zero"
        );
        let (orig, dims) = host(pick(&mut model));
        // Up to 24 entries spread over the tensor.
        let stride = (orig.len() / 24).max(1);
        for i in (0..orig.len()).step_by(stride) {
            let mut eval = |delta: f64| {
                let mut v = orig.clone();
                v[i] += delta;
                set(pick(&mut model), v, dims, &device);
                let (l, routing) = loss(&model, &device);
                (value(l), routing == base_routing)
            };
            let ((up, same_up), (down, same_down)) = (eval(EPS), eval(-EPS));
            set(pick(&mut model), orig.clone(), dims, &device);
            if !(same_up && same_down) {
                // The perturbation moved a token to another expert: the loss is not smooth here.
                skipped += 1;
                continue;
            }
            let fd = (up - down) / (2.0 * EPS);
            let err = (fd - analytic[i]).abs() / (1.0 + analytic[i].abs());
            worst = worst.max(err);
            assert!(
                err < 1e-6,
                "{name}[{i}]: finite difference {fd:.10e}, analytic {:.10e}",
                analytic[i]
            );
            checked += 1;
        }
    }
    eprintln!("checked {checked} entries (skipped {skipped} at routing changes), worst relative error {worst:.2e}");
    assert!(
        checked >= 150 && skipped * 10 <= checked,
        "checked {checked}, skipped {skipped}"
    );
}
