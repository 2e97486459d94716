//! simbal-burn's API beyond agreement: how loss tensors enter the objective (weights, negative
//! weights, left out), a backward after the router routed another batch, the errors (bad shapes,
//! bad masks, non-finite inputs, a failing backward), lending without a copy, statistics and the
//! bias update, and the forward on a backend without autodiff.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use common::{bools, float, host, max_rel, normal};
use simbal_burn::ndarray::HostLent;
use simbal_burn::{MoeRouter, SimbalBackend, TensorBatch};
use simbal_core::{
    orthogonal_init, BiasUpdateConfig, LblConfig, LossConfig, Reference, Router, RouterConfig,
    SimBalConfig, SimbalError, WeightLayout, ZLossConfig,
};

type B = Autodiff<NdArray<f64>>;
const N: usize = 16;
const D: usize = 8;
const E: usize = 4;
const K: usize = 2;

struct Data {
    x: Vec<f64>,
    r: Vec<f64>,
    dw: Vec<f64>,
}

fn data(seed: u64) -> Data {
    let mut rng = simbal_core::Rng::new(seed);
    let r: Vec<f64> = orthogonal_init(WeightLayout::DxE, D, E, seed).unwrap();
    Data {
        x: normal(&mut rng, N * D, 1.0),
        r: r.iter().map(|v| v * 1.2 + rng.normal() * 0.05).collect(),
        dw: normal(&mut rng, N * K, 1.0),
    }
}

/// `dX`, `dR` of the reference for gate gradient `dw` and `losses`.
fn reference(d: &Data, dw: &[f64], losses: &LossConfig) -> (Vec<f64>, Vec<f64>) {
    let mut router = Router::new(Reference::<f64>::new(), RouterConfig::new(E, K)).unwrap();
    let mut pass = router.forward(&d.x, &d.r, None).unwrap();
    let g = pass.backward(dw, losses, None).unwrap();
    (g.dx.to_vec(), g.dr.to_vec())
}

fn all_losses() -> LossConfig {
    LossConfig::simbal()
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default())
}

/// The gradients of `objective(gates, losses)` on simbal-burn.
fn burn_grads(
    d: &Data,
    objective: impl Fn(&simbal_burn::RouterOutput<B>, Tensor<B, 2>) -> Tensor<B, 1>,
) -> (Vec<f64>, Vec<f64>) {
    let x = float::<B, 2>(&d.x, [N, D]).require_grad();
    let r = float::<B, 2>(&d.r, [D, E]).require_grad();
    let router = MoeRouter::<B>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let out = router.forward(x.clone(), r.clone(), &all_losses()).unwrap();
    let grads = objective(&out, float::<B, 2>(&d.dw, [N, K])).backward();
    assert!(router.take_error().unwrap().is_none());
    (
        host(&x.grad(&grads).unwrap()),
        host(&r.grad(&grads).unwrap()),
    )
}

#[test]
fn loss_tensors_enter_the_objective_with_their_weights() {
    let d = data(3);
    let (dx, dr) = burn_grads(&d, |out, dw| {
        (out.gates.clone() * dw).sum() + out.losses.lbl.clone().mul_scalar(2.0)
            - out.losses.simbal.clone().mul_scalar(0.5)
    });
    let lbl2 = LossConfig::none().with_lbl(LblConfig {
        alpha: 0.02,
        ..LblConfig::default()
    });
    let (mut want_dx, mut want_dr) = reference(&d, &d.dw, &lbl2);
    let half_simbal = LossConfig::none().with_simbal(SimBalConfig {
        lambda: 0.05,
        ..SimBalConfig::default()
    });
    let (sx, sr) = reference(&d, &vec![0.0; N * K], &half_simbal);
    want_dx.iter_mut().zip(&sx).for_each(|(a, b)| *a -= b);
    want_dr.iter_mut().zip(&sr).for_each(|(a, b)| *a -= b);
    assert!(max_rel(&dx, &want_dx) <= 1e-10);
    assert!(max_rel(&dr, &want_dr) <= 1e-10);
}

#[test]
fn a_loss_tensor_left_out_sends_no_gradient() {
    let d = data(4);
    let (dx, dr) = burn_grads(&d, |out, dw| (out.gates.clone() * dw).sum());
    let (want_dx, want_dr) = reference(&d, &d.dw, &LossConfig::none());
    assert!(max_rel(&dx, &want_dx) <= 1e-10);
    assert!(max_rel(&dr, &want_dr) <= 1e-10);
}

#[test]
fn a_backward_after_another_forward_routes_its_own_batch_again() {
    let (d1, d2) = (data(5), data(6));
    let router = MoeRouter::<B>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let run = |d: &Data| {
        let x = float::<B, 2>(&d.x, [N, D]).require_grad();
        let r = float::<B, 2>(&d.r, [D, E]).require_grad();
        let out = router.forward(x.clone(), r.clone(), &all_losses()).unwrap();
        let obj = (out.gates.clone() * float::<B, 2>(&d.dw, [N, K])).sum() + out.losses.total();
        (x, r, obj)
    };
    let (x1, r1, obj1) = run(&d1);
    let (x2, r2, obj2) = run(&d2);
    // The first batch's backward runs while the router holds the second's routing.
    for (d, x, r, obj) in [(&d1, x1, r1, obj1), (&d2, x2, r2, obj2)] {
        let grads = obj.backward();
        let (want_dx, want_dr) = reference(d, &d.dw, &all_losses());
        assert!(max_rel(&host(&x.grad(&grads).unwrap()), &want_dx) <= 1e-10);
        assert!(max_rel(&host(&r.grad(&grads).unwrap()), &want_dr) <= 1e-10);
    }
    assert!(router.take_error().unwrap().is_none());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let d = data(7);
    let router = MoeRouter::<B>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let x = float::<B, 2>(&d.x, [N, D]);
    let r = float::<B, 2>(&d.r, [D, E]);
    let losses = LossConfig::simbal();
    // R of the wrong orientation, X of the wrong width.
    let rt = r.clone().transpose();
    assert!(matches!(
        router.forward(x.clone(), rt, &losses),
        Err(SimbalError::LengthMismatch { .. })
    ));
    let narrow = float::<B, 2>(&d.x[..N * (D - 1)], [N, D - 1]);
    assert!(matches!(
        router.forward(narrow, r.clone(), &losses),
        Err(SimbalError::LengthMismatch { .. })
    ));
    // A mask of the wrong length; a non-finite token.
    let mask = TensorBatch::new().mask(bools::<B>(&[true; N - 1]));
    assert!(matches!(
        router.forward_batch(x.clone(), r.clone(), mask, &losses, None),
        Err(SimbalError::LengthMismatch { .. })
    ));
    let mut bad = d.x.clone();
    bad[D + 3] = f64::NAN;
    assert!(matches!(
        router.forward(float::<B, 2>(&bad, [N, D]), r.clone(), &losses),
        Err(SimbalError::NonFinite { .. })
    ));
    // A global-batch LBL without statistics.
    let global = LossConfig::none().with_lbl(LblConfig {
        level: simbal_core::LblLevel::GlobalBatch,
        ..LblConfig::default()
    });
    assert!(router.forward(x, r, &global).is_err());
}

#[test]
fn a_failing_backward_keeps_its_error_and_gives_nan_gradients() {
    let d = data(8);
    let router = MoeRouter::<B>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let x = float::<B, 2>(&d.x, [N, D]).require_grad();
    let r = float::<B, 2>(&d.r, [D, E]).require_grad();
    let out = router.forward(x.clone(), r.clone(), &all_losses()).unwrap();
    let mut dw = d.dw.clone();
    dw[5] = f64::INFINITY;
    let grads = (out.gates * float::<B, 2>(&dw, [N, K])).sum().backward();
    assert!(matches!(
        router.take_error().unwrap(),
        Some(SimbalError::NonFinite { .. })
    ));
    assert!(host(&r.grad(&grads).unwrap()).iter().all(|v| v.is_nan()));
    assert!(router.take_error().unwrap().is_none(), "taking clears it");
}

#[test]
fn contiguous_host_tensors_are_lent_without_a_copy() {
    type H = NdArray<f32>;
    let engine = <H as SimbalBackend>::engine(&Default::default()).unwrap();
    let t = float::<H, 2>(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    let prim: FloatTensor<H> = t.clone().into_primitive().tensor();
    let lent = H::lend(&engine, &prim).unwrap();
    let HostLent::Borrowed(s) = lent else {
        panic!("a contiguous tensor was copied")
    };
    // The same memory: the slice lies inside the tensor's own storage.
    let again = H::lend(&engine, &prim).unwrap();
    assert_eq!(
        std::borrow::Borrow::<[f32]>::borrow(&again).as_ptr(),
        s.as_ptr()
    );
    assert_eq!(s, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // A transposed view is copied in row-major order.
    let tt: FloatTensor<H> = t.transpose().into_primitive().tensor();
    match H::lend(&engine, &tt).unwrap() {
        HostLent::Copied(v) => assert_eq!(v, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
        HostLent::Borrowed(_) => panic!("a transposed tensor lent as row-major"),
    }
}

#[test]
fn statistics_bias_update_and_a_forward_without_autodiff() {
    type H = NdArray<f64>;
    let d = data(9);
    let router = MoeRouter::<H>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let bias = float::<H, 1>(&[0.01, -0.02, 0.0, 0.03], [E]);
    let batch = TensorBatch::new().bias(bias.clone());
    let x = float::<H, 2>(&d.x, [N, D]);
    let r = float::<H, 2>(&d.r, [D, E]);
    let out = router
        .forward_batch(x, r, batch, &all_losses(), None)
        .unwrap();
    let mut reference_router =
        Router::new(Reference::<f64>::new(), RouterConfig::new(E, K)).unwrap();
    let host_bias = host(&bias);
    let mut pass = reference_router
        .forward(&d.x, &d.r, Some(&host_bias))
        .unwrap();
    let want = pass.loss_values(&all_losses(), None).unwrap();
    assert!(max_rel(&[out.values.total], &[want.total]) <= 1e-12);
    let stats = router.stats().unwrap();
    let want_stats = reference_router.stats().unwrap();
    assert_eq!(
        (
            &stats.counts,
            &stats.routed_counts,
            stats.tokens,
            stats.dropped
        ),
        (
            &want_stats.counts,
            &want_stats.routed_counts,
            want_stats.tokens,
            want_stats.dropped
        )
    );
    assert!(max_rel(&stats.score_sums, &want_stats.score_sums) <= 1e-12);
    let cfg = BiasUpdateConfig::default();
    let updated = router.update_bias(bias, &cfg, &stats).unwrap();
    let mut want_bias = host_bias.clone();
    simbal_core::update_bias(&Reference::<f64>::new(), &cfg, &stats, &mut want_bias[..]).unwrap();
    assert_eq!(host(&updated), want_bias);
    let m = router.load_metrics().unwrap();
    assert!(m.max_vio.is_finite());
}

/// The address of an `NdArray<f64>` tensor's first element.
fn address(t: &Tensor<NdArray<f64>, 2>) -> usize {
    match t.clone().into_primitive().tensor() {
        burn_ndarray::NdArrayTensor::F64(s) => s.view().as_ptr() as usize,
        _ => panic!("not an f64 tensor"),
    }
}

#[test]
fn gradient_memory_is_reused_only_once_dropped() {
    let router = MoeRouter::<B>::new(RouterConfig::new(E, K), &Default::default()).unwrap();
    let step = |d: &Data| {
        let x = float::<B, 2>(&d.x, [N, D]).require_grad();
        let r = float::<B, 2>(&d.r, [D, E]).require_grad();
        let out = router.forward(x.clone(), r.clone(), &all_losses()).unwrap();
        let grads =
            ((out.gates * float::<B, 2>(&d.dw, [N, K])).sum() + out.losses.total()).backward();
        (
            x.grad(&grads).unwrap(),
            reference(d, &d.dw, &all_losses()).0,
        )
    };
    let (dx1, want1) = step(&data(10));
    let (dx2, want2) = step(&data(11));
    // The first gradient is still held: the second backward wrote elsewhere.
    assert!(max_rel(&host(&dx1), &want1) <= 1e-10);
    assert!(max_rel(&host(&dx2), &want2) <= 1e-10);
    assert_ne!(address(&dx1), address(&dx2));
    // Once dropped, the next backward writes into the same memory (no fresh pages).
    let at = address(&dx2);
    drop(dx2);
    let (dx3, want3) = step(&data(12));
    assert!(max_rel(&host(&dx3), &want3) <= 1e-10);
    assert_eq!(address(&dx3), at);
    assert!(max_rel(&host(&dx1), &want1) <= 1e-10);
}
