//! A small Mixture-of-Experts layer trained with a dfdx optimiser, the router's gradient coming
//! from simbal: the experts and the combine run on dfdx's tape; the tape gives the task loss's
//! gradient with respect to the gates; simbal's [`Router`] turns it (plus SimBal, optionally the
//! LBL) into the router weight's gradient, which is added into dfdx's [`Gradients`] before Adam
//! steps every parameter. The router weight lives in the model as a dfdx `UnbiasedLinear`, so its
//! layout is [`WeightLayout::ExD`].
//!
//! The task is a teacher MoE: each token is mapped by the linear map of the teacher expert its
//! position selects, so the student must learn both its experts and its routing.

use crate::backend::{dx, Dfdx};
use crate::interop::{add_to_gradients_cpu, PassTensors, RouterTensors, RoutingTensors};
use dfdx::nn::builders::{Linear, ReLU, UnbiasedLinear};
use dfdx::nn::{DeviceBuildExt, Module};
use dfdx::optim::{Adam, AdamConfig, Optimizer};
use dfdx::shapes::{Axes2, Axis, Const};
use dfdx::tensor::{Cpu, Gradients, Tensor, TensorFromVec, Trace};
use dfdx::tensor_ops::{
    BroadcastTo, GatherTo, MeanTo, PermuteTo, ReshapeTo, SumTo, TryMul, TryStack, TrySub,
};
use simbal_core::{
    orthogonal_init, LblConfig, LossConfig, Memory, Rng, Router, RouterConfig, SimBalConfig,
    SimbalError, WeightLayout,
};

/// Input width of the demo layer.
pub const D_IN: usize = 8;
/// Hidden width of each expert MLP.
pub const HIDDEN: usize = 16;
/// Output width of the demo layer.
pub const D_OUT: usize = 4;
/// Experts in the demo layer.
pub const EXPERTS: usize = 4;

type Expert = (Linear<D_IN, HIDDEN>, ReLU, Linear<HIDDEN, D_OUT>);
type Model = (
    UnbiasedLinear<D_IN, EXPERTS>,
    (Expert, Expert, Expert, Expert),
);

/// Settings of [`train_demo_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens in the (fixed) training batch.
    pub tokens: usize,
    /// Experts per token.
    pub k: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// SimBal coefficient (0 turns it off).
    pub simbal_lambda: f64,
    /// LBL coefficient (0 turns it off).
    pub lbl_alpha: f64,
    /// Seed of the data, the teacher and the model.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            steps: 150,
            tokens: 128,
            k: 2,
            lr: 5e-3,
            simbal_lambda: 0.1,
            lbl_alpha: 0.0,
            seed: 7,
        }
    }
}

/// What one training step logged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoStep {
    /// Step number (0-based).
    pub step: usize,
    /// Task loss (mean squared error) before the update.
    pub task_loss: f32,
    /// SimBal value before the update.
    pub simbal: f32,
    /// LBL value before the update (0 when off).
    pub lbl: f32,
    /// MaxVio of the step's routing.
    pub max_vio: f64,
}

/// The log of a demo run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// One entry per step.
    pub steps: Vec<DemoStep>,
}

impl Summary {
    /// Task loss of the first step.
    pub fn initial_loss(&self) -> Option<f32> {
        self.steps.first().map(|s| s.task_loss)
    }
    /// Task loss of the last step.
    pub fn final_loss(&self) -> Option<f32> {
        self.steps.last().map(|s| s.task_loss)
    }
}

/// Trains the demo MoE layer for `steps` steps with the default settings.
pub fn train_demo(steps: usize) -> simbal_core::Result<Summary> {
    train_demo_with(&DemoConfig {
        steps,
        ..DemoConfig::default()
    })
}

/// Trains the demo MoE layer with the given settings and returns its log.
pub fn train_demo_with(cfg: &DemoConfig) -> simbal_core::Result<Summary> {
    if cfg.tokens == 0 {
        return Err(SimbalError::ZeroDim { what: "N" });
    }
    let n = cfg.tokens;
    let dev = Cpu::seed_from_u64(cfg.seed);
    let be = Dfdx::<f32>::with_device(dev.clone());
    let mut rng = Rng::new(cfg.seed);

    // Data and teacher: token t goes to teacher expert argmax(x_t C), mapped by T_e.
    let mut x = vec![0f32; n * D_IN];
    rng.fill_normal(1.0, &mut x);
    let mut c = vec![0f32; D_IN * EXPERTS];
    rng.fill_normal(1.0, &mut c);
    let mut teachers = vec![0f32; EXPERTS * D_OUT * D_IN];
    rng.fill_normal(1.0 / (D_IN as f64).sqrt(), &mut teachers);
    let mut y = vec![0f32; n * D_OUT];
    for t in 0..n {
        let xt = &x[t * D_IN..(t + 1) * D_IN];
        let score = |e: usize| (0..D_IN).map(|i| xt[i] * c[i * EXPERTS + e]).sum::<f32>();
        let best = (0..EXPERTS).fold(0, |b, e| if score(e) > score(b) { e } else { b });
        for o in 0..D_OUT {
            let row = &teachers[(best * D_OUT + o) * D_IN..(best * D_OUT + o + 1) * D_IN];
            y[t * D_OUT + o] = row.iter().zip(xt).map(|(a, b)| a * b).sum();
        }
    }
    let xs: Tensor<(usize, Const<D_IN>), f32, Cpu> =
        dx(dev.try_tensor_from_vec(x, (n, Const::<D_IN>)))?;
    let ys: Tensor<(usize, Const<D_OUT>), f32, Cpu> =
        dx(dev.try_tensor_from_vec(y, (n, Const::<D_OUT>)))?;

    // The model; the router weight starts orthogonal (rows of the E x D weight orthonormal).
    let mut model = dx(dev.try_build_module::<Model, f32>())?;
    let r0 = orthogonal_init::<f32>(WeightLayout::ExD, D_IN, EXPERTS, cfg.seed)?;
    model.0.weight.copy_from(&r0);
    let mut opt = Adam::new(
        &model,
        AdamConfig {
            lr: cfg.lr,
            ..Default::default()
        },
    );

    let rcfg = RouterConfig::new(EXPERTS, cfg.k).with_layout(WeightLayout::ExD);
    let mut router = Router::new(be.clone(), rcfg)?;
    let mut losses = LossConfig::none();
    if cfg.simbal_lambda > 0.0 {
        losses = losses.with_simbal(SimBalConfig {
            lambda: cfg.simbal_lambda,
            ..SimBalConfig::default()
        });
    }
    if cfg.lbl_alpha > 0.0 {
        losses = losses.with_lbl(LblConfig {
            alpha: cfg.lbl_alpha,
            ..LblConfig::default()
        });
    }

    let mut log = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        // The inputs share the weight's memory; they are gone before Adam writes it.
        let (task_loss, values, grads) = {
            // 1. Route with simbal.
            let inputs = router.tensor_inputs(&xs, &model.0.weight)?;
            let mut pass = router.forward_tensors(&inputs, None)?;
            let dense = pass.dense_gates_tensor()?; // n x E, constant to the router

            // 2. Experts and combine on dfdx's tape; the gates are a leaf so the tape yields
            // dL/dG.
            let experts = &model.1;
            let outs = [
                dx(experts.0.try_forward(xs.leaky_trace()))?,
                dx(experts.1.try_forward(xs.leaky_trace()))?,
                dx(experts.2.try_forward(xs.leaky_trace()))?,
                dx(experts.3.try_forward(xs.leaky_trace()))?,
            ];
            let stacked = dx(outs.try_stack())?; // E x n x D_OUT
            let shape3 = (Const::<EXPERTS>, n, Const::<D_OUT>);
            let g = dx(dense.leaky_trace().try_permute::<_, Axes2<1, 0>>())?;
            let g = dx(g.try_reshape_like(&(Const::<EXPERTS>, n)))?;
            let g = dx(g.try_broadcast_like::<_, Axis<2>>(&shape3))?;
            let pred: Tensor<(usize, Const<D_OUT>), f32, Cpu, _> =
                dx(dx(g.try_mul(stacked))?.try_sum::<_, Axis<0>>())?;
            let task = dx(dx(dx(pred.try_sub(ys.clone()))?.try_square())?.try_mean::<(), _>())?;
            let task_loss = task.as_vec()[0];
            let mut grads: Gradients<f32, Cpu> =
                dx(dfdx::tensor_ops::Backward::try_backward(task))?;

            // 3. dL/dW_tj = dL/dG[t, i_tj]; simbal's backward gives the router weight's gradient.
            let dw = dx(grads.get(&dense).try_gather(pass.indices_tensor()?))?;
            let g = pass.backward_tensors(&dw, &losses, None)?;
            let mut dr = vec![0f32; EXPERTS * D_IN];
            be.download(g.dr, &mut dr)?;
            add_to_gradients_cpu(&mut grads, &model.0.weight, &dr)?;
            (task_loss, g.losses, grads)
        };
        log.push(DemoStep {
            step,
            task_loss,
            simbal: values.simbal,
            lbl: values.lbl,
            max_vio: router.load_metrics()?.max_vio,
        });

        // 4. One Adam step over experts and router.
        opt.update(&mut model, &grads)
            .map_err(|e| SimbalError::Backend {
                message: format!("dfdx optimiser: {e}"),
            })?;
    }
    Ok(Summary { steps: log })
}
