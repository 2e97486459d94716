//! dfdx tensors in and out: conversions, the tensor-driven router in both layouts, gradients
//! added into dfdx `Gradients` and applied by dfdx optimisers.

mod common;

use common::{close, rand_vec, NORMS};
use dfdx::nn::builders::UnbiasedLinear;
use dfdx::nn::{DeviceBuildExt, ZeroGrads};
use dfdx::optim::{Optimizer, Sgd, SgdConfig};
use dfdx::shapes::{Axes2, Axis, Const, HasShape, Rank2};
use dfdx::tensor::{AsArray, Cpu, Gradients, Tensor, TensorFrom, TensorFromVec};
use dfdx::tensor_ops::{BroadcastTo, PermuteTo};
use simbal_core::simbal::reference::simbal_direct;
use simbal_core::{
    DropPolicy, LossConfig, Memory, Rng, Router, RouterConfig, SimBalConfig, SimbalError,
    WeightLayout,
};
use simbal_dfdx::{
    add_to_gradients, add_to_gradients_cpu, simbal_loss_tensor, weight_shape, Dfdx,
    GradientTensors, PassTensors, RouterTensors, RoutingTensors,
};

fn normal(rng: &mut Rng, len: usize) -> Vec<f64> {
    rand_vec(rng, len)
}

#[test]
fn buffers_and_tensors_round_trip_even_when_strided() {
    let be = Dfdx::<f64>::cpu();
    let dev = be.device().clone();
    let t: Tensor<(usize, usize), f64, Cpu> =
        dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3));
    assert_eq!(be.buf_from_tensor(&t).unwrap().as_vec(), t.as_vec());
    // A permuted view is flattened in its logical (row-major) order.
    let tt = t.clone().permute::<_, Axes2<1, 0>>();
    let b = be.buf_from_tensor(&tt).unwrap();
    let mut host = vec![0.0; 6];
    be.download(&b, &mut host).unwrap();
    assert_eq!(host, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // A broadcast vector too.
    let row: Tensor<(usize,), f64, Cpu> = dev.tensor_from_vec(vec![7.0, 8.0], (2,));
    let bc = row.broadcast_like::<_, Axis<0>>(&(3, 2));
    assert_eq!(
        be.buf_from_tensor(&bc).unwrap().as_vec(),
        vec![7.0, 8.0, 7.0, 8.0, 7.0, 8.0]
    );
    let back = be.tensor_from_buf(&b, (3usize, 2usize)).unwrap();
    assert_eq!(back.as_vec(), tt.as_vec());
    assert!(matches!(
        be.tensor_from_buf(&b, (4usize, 2usize)),
        Err(SimbalError::LengthMismatch { .. })
    ));
    assert!(be.index_tensor(&[1, 2, 3], 2, 2).is_err());
    assert_eq!(
        be.index_tensor(&[1, 2, 3, 0], 2, 2).unwrap().as_vec(),
        vec![1, 2, 3, 0]
    );
}

/// The tensor-driven router equals the buffer-driven one, in both layouts, and a weight of the
/// wrong shape for the layout is refused.
#[test]
fn router_tensors_match_buffers_in_both_layouts() {
    let (n, d, e, k) = (10, 5, 4, 2);
    let be = Dfdx::<f64>::cpu();
    let dev = be.device().clone();
    let mut rng = Rng::new(4);
    let x = normal(&mut rng, n * d);
    let r_dxe = normal(&mut rng, d * e);
    let dw = normal(&mut rng, n * k);
    for layout in [WeightLayout::DxE, WeightLayout::ExD] {
        let r = match layout {
            WeightLayout::DxE => r_dxe.clone(),
            WeightLayout::ExD => (0..e * d).map(|i| r_dxe[(i % d) * e + i / d]).collect(),
        };
        let cfg = RouterConfig::new(e, k)
            .with_layout(layout)
            .with_capacity(0.7, DropPolicy::Probs);
        let losses = LossConfig::simbal().with_lbl(Default::default());
        let mut plain = Router::new(be.clone(), cfg).unwrap();
        let [xb, rb, dwb] = [&x, &r, &dw].map(|v| be.upload(v).unwrap());
        let mut pp = plain.forward(&xb, &rb, None).unwrap();

        let mut tr = Router::new(be.clone(), cfg).unwrap();
        let xt: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(x.clone(), (n, d));
        let wt: Tensor<(usize, usize), f64, Cpu> =
            dev.tensor_from_vec(r.clone(), weight_shape(layout, d, e));
        let dwt: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(dw.clone(), (n, k));

        // The other layout's shape is refused.
        let (rr, cc) = weight_shape(layout, d, e);
        let wrong: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(r.clone(), (cc, rr));
        let err = tr.tensor_inputs(&xt, &wrong).unwrap_err();
        assert!(matches!(err, SimbalError::LengthMismatch { .. }), "{err:?}");

        let inputs = tr.tensor_inputs(&xt, &wt).unwrap();
        let mut tp = tr.forward_tensors(&inputs, None).unwrap();
        assert_eq!(tp.gates_tensor().unwrap().as_vec(), pp.gates().as_vec());
        assert_eq!(tp.scores_tensor().unwrap().shape(), &(n, e));
        let idx: Vec<usize> = pp.indices().iter().map(|&i| i as usize).collect();
        assert_eq!(tp.indices_tensor().unwrap().as_vec(), idx);

        // Dense gates: each row holds its kept gates at the chosen experts, zeros elsewhere.
        let dense = tp.dense_gates_tensor().unwrap().as_vec();
        let gates = pp.gates().as_vec();
        let dropped = pp.dropped().to_vec();
        assert!(dropped.contains(&1), "capacity should drop something");
        for t in 0..n {
            for j in 0..k {
                let a = t * k + j;
                let want = if dropped[a] == 1 { 0.0 } else { gates[a] };
                assert_eq!(dense[t * e + idx[a]], want);
            }
            let nonzero = dense[t * e..(t + 1) * e]
                .iter()
                .filter(|v| **v != 0.0)
                .count();
            assert!(nonzero <= k);
        }

        let gp = pp.backward(&dwb, &losses, None).unwrap();
        let gt = tp.backward_tensors(&dwt, &losses, None).unwrap();
        assert_eq!(gp.losses, gt.losses, "{layout:?}");
        let gx = gt.dx_like(&xt).unwrap();
        assert_eq!(gx.shape(), &(n, d));
        assert_eq!(gx.as_vec(), gp.dx.as_vec());
        let g = gt.dr_like(&wt).unwrap();
        assert_eq!(g.shape(), &weight_shape(layout, d, e));
        assert_eq!(g.as_vec(), gp.dr.as_vec());
        assert!(matches!(
            gt.dr_like(&xt),
            Err(SimbalError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn simbal_loss_tensor_matches_the_direct_formula() {
    let be = Dfdx::<f64>::cpu();
    let dev = be.device().clone();
    let mut rng = Rng::new(9);
    let (d, e) = (6, 3);
    for layout in [WeightLayout::DxE, WeightLayout::ExD] {
        for norm in NORMS {
            let cfg = SimBalConfig { lambda: 0.2, norm };
            let r = normal(&mut rng, d * e);
            let w: Tensor<(usize, usize), f64, Cpu> =
                dev.tensor_from_vec(r.clone(), weight_shape(layout, d, e));
            let (l, g) = simbal_loss_tensor(&be, &cfg, layout, &w).unwrap();
            let mut want = vec![0.0; d * e];
            let lw = simbal_direct(&cfg, layout, d, e, &r, Some(&mut want));
            close("loss", &[l], &[lw]);
            close("grad", &g.as_vec(), &want);
        }
    }
}

/// Both ways of adding into `Gradients` add exactly, and a dfdx optimiser applies the result.
#[test]
fn gradients_reach_a_dfdx_optimiser() {
    let dev = Cpu::seed_from_u64(1);
    let be = Dfdx::<f64>::with_device(dev.clone());
    // The router weight inside a dfdx module: UnbiasedLinear<D, E> stores E x D (ExD layout).
    let mut model = dev.build_module::<UnbiasedLinear<5, 3>, f64>();
    let w0 = model.weight.as_vec();
    let g: Tensor<Rank2<3, 5>, f64, Cpu> = dev.tensor([
        [0.1, -0.2, 0.3, 0.0, 1.0],
        [0.5, 0.5, -0.5, 0.25, 0.0],
        [2.0, 0.0, 0.0, -1.0, 0.125],
    ]);

    // Generic path, on gradients from alloc_grads (the weight is a leaf there).
    let mut grads = model.alloc_grads();
    add_to_gradients(&mut grads, &model.weight, &g).unwrap();
    add_to_gradients(&mut grads, &model.weight, &g).unwrap();
    assert_eq!(
        grads.get(&model.weight).as_vec(),
        (g.clone() * 2.0).as_vec()
    );

    // Cpu path, in place.
    let mut grads_cpu = model.alloc_grads();
    add_to_gradients_cpu(&mut grads_cpu, &model.weight, &g.as_vec()).unwrap();
    add_to_gradients_cpu(&mut grads_cpu, &model.weight, &g.as_vec()).unwrap();
    assert_eq!(
        grads_cpu.get(&model.weight).array(),
        grads.get(&model.weight).array()
    );

    // On leaky gradients with no entry yet, both allocate one.
    let mut leaky = Gradients::leaky();
    add_to_gradients(&mut leaky, &model.weight, &g).unwrap();
    assert_eq!(leaky.get(&model.weight).as_vec(), g.as_vec());
    let mut leaky = Gradients::leaky();
    add_to_gradients_cpu(&mut leaky, &model.weight, &g.as_vec()).unwrap();
    assert_eq!(leaky.get(&model.weight).as_vec(), g.as_vec());

    // Plain SGD applies exactly w - lr * grad.
    let mut sgd = Sgd::new(
        &model,
        SgdConfig {
            lr: 0.5,
            momentum: None,
            weight_decay: None,
        },
    );
    sgd.update(&mut model, &grads_cpu).unwrap();
    let want: Vec<f64> = w0
        .iter()
        .zip(g.as_vec())
        .map(|(w, gv)| w - 0.5 * 2.0 * gv)
        .collect();
    close("sgd step", &model.weight.as_vec(), &want);

    // Errors: wrong length, a broadcast (non-contiguous) parameter.
    let mut grads = model.alloc_grads();
    assert!(matches!(
        add_to_gradients_cpu(&mut grads, &model.weight, &[1.0; 3]),
        Err(SimbalError::LengthMismatch { .. })
    ));
    let v: Tensor<(usize,), f64, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0], (2,));
    let bc = v.broadcast_like::<_, Axis<0>>(&(3usize, 2usize));
    let mut leaky = Gradients::leaky();
    assert!(add_to_gradients_cpu(&mut leaky, &bc, &[0.0; 6]).is_err());
    let _ = be;
}

/// A whole step: simbal's router on a module's weight, its dR into the module's gradients, and
/// an SGD update moves the weight by exactly -lr * dR.
#[test]
fn router_gradient_drives_an_sgd_step() {
    const D: usize = 6;
    const E: usize = 4;
    let n = 9;
    let dev = Cpu::seed_from_u64(3);
    let be = Dfdx::<f64>::with_device(dev.clone());
    let mut model = dev.build_module::<UnbiasedLinear<D, E>, f64>();
    let mut rng = Rng::new(12);
    let x: Tensor<(usize, Const<D>), f64, Cpu> =
        dev.tensor_from_vec(normal(&mut rng, n * D), (n, Const));
    let dw: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(normal(&mut rng, n * 2), (n, 2));
    let mut router =
        Router::new(be, RouterConfig::new(E, 2).with_layout(WeightLayout::ExD)).unwrap();
    let inputs = router.tensor_inputs(&x, &model.weight).unwrap();
    let mut pass = router.forward_tensors(&inputs, None).unwrap();
    let g = pass
        .backward_tensors(&dw, &LossConfig::simbal(), None)
        .unwrap();
    let mut grads = model.alloc_grads();
    g.add_weight_grad(&mut grads, &model.weight).unwrap();
    let dr = g.dr_like(&model.weight).unwrap().as_vec();
    assert!(dr.iter().any(|v| v.abs() > 1e-6));
    drop(inputs); // it shares the weight's memory, which SGD is about to write
    let w0 = model.weight.as_vec();
    let mut sgd = Sgd::new(
        &model,
        SgdConfig {
            lr: 0.1,
            momentum: None,
            weight_decay: None,
        },
    );
    sgd.update(&mut model, &grads).unwrap();
    let want: Vec<f64> = w0.iter().zip(&dr).map(|(w, g)| w - 0.1 * g).collect();
    close("weight after SGD", &model.weight.as_vec(), &want);
}
