//! A whole router step (forward + backward with SimBal, LBL and z-loss) waits for the device
//! once: the read of its loss values, which also carries the forward's input checks. Counted
//! with the backend's own counters ([`simbal_cubecl::counters`]: every launch and every host
//! read of this crate goes through them) on wgpu (lavapipe in CI).

mod common;

use common::gpu;
use simbal_core::config::{LblConfig, LblLevel, SeqLayout, ZLossConfig};
use simbal_core::{
    orthogonal_init, Batch, LossConfig, Memory, Router, RouterConfig, SimBalConfig, SimbalError,
    WeightLayout,
};
use simbal_cubecl::{counters, Counters, CubeclBackend, DevBuf};

type B = CubeclBackend<common::R>;

fn values(n: usize, seed: u64) -> Vec<f32> {
    common::Rng::new(seed).vec(n)
}

/// The benchmark's losses: SimBal, micro-batch LBL, z-loss.
fn losses() -> LossConfig {
    LossConfig::none()
        .with_simbal(SimBalConfig::default())
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default())
}

struct Step {
    x: DevBuf<f32>,
    r: DevBuf<f32>,
    dw: DevBuf<f32>,
    router: Router<B>,
}

impl Step {
    fn new(be: &B, (n, d, e, k): (usize, usize, usize, usize), cfg: RouterConfig) -> Self {
        let r: Vec<f32> = orthogonal_init(WeightLayout::DxE, d, e, 3).unwrap();
        Self {
            x: be.upload(&values(n * d, 1)).unwrap(),
            r: be.upload(&r).unwrap(),
            dw: be.upload(&values(n * k, 2)).unwrap(),
            router: Router::new(be.clone(), cfg).unwrap(),
        }
    }

    /// Counts of one `forward + backward` (the second of two: buffers and kernels are warm).
    fn count(&mut self, losses: &LossConfig, batch: impl Fn() -> Batch<'static, B>) -> Counters {
        let mut run = || {
            let mut pass = self
                .router
                .forward_batch(&self.x, &self.r, batch())
                .unwrap();
            let before = counters();
            let total = pass.backward(&self.dw, losses, None).unwrap().losses.total;
            assert!(total.is_finite() && total > 0.0, "{total}");
            before
        };
        run();
        let start = counters();
        let mid = run();
        let end = counters();
        assert_eq!((mid - start).waits, 0, "the forward waited for the device");
        end - start
    }
}

const SHAPES: [(usize, usize, usize, usize); 3] =
    [(256, 64, 32, 4), (256, 96, 8, 2), (128, 64, 64, 8)];

#[test]
fn a_step_waits_for_the_device_once() {
    let Some(be) = gpu() else { return };
    for &(n, d, e, k) in &SHAPES {
        for check in [false, true] {
            let mut cfg = RouterConfig::new(e, k).with_check_finite(check);
            if e == 64 {
                cfg = cfg.with_groups(8, 4); // DeepSeek-V3-style group-limited routing
            }
            let mut step = Step::new(&be, (n, d, e, k), cfg);
            let c = step.count(&losses(), Batch::new);
            println!("N {n} D {d} E {e} k {k} check_finite {check}: {c:?}");
            assert_eq!(c.waits, 1, "N {n} D {d} E {e} k {k} check {check}: {c:?}");
            // Logits GEMM and rows (one fused launch for E <= 8); dispatch (zeroed counts, the
            // count that also clears the dropped flags, the plan); LBL score sums, plain counts
            // (zeroed, counted), coefficients with their value; the backward rows (with each
            // row's lse^2 and, with checks, max |dZ|) and the lse^2 sum; dR, dX; SimBal's Gram,
            // residual (partials, their sum), product (through cubek into a temporary, then
            // `dR += T`). With checks: max |Z|, |dW|, |R|, |dR|, one launch and a zeroed cell
            // (an upload) each. A cubek GEMM counts as one launch. Measured: 18 and 22 (17 and 21
            // for E = 8).
            let fused = usize::from(e <= 8) as u64;
            let unfused = if check { 22 } else { 18 };
            let bound = unfused - fused;
            let uploads = if check { 5 } else { 0 };
            assert!(c.uploads <= uploads, "{c:?} uploads over {uploads}");
            assert!(c.launches <= bound, "{c:?} launches over {bound}");
        }
    }
}

#[test]
fn a_queued_backward_waits_only_when_finished() {
    let Some(be) = gpu() else { return };
    let (n, d, e, k) = (128, 32, 16, 2);
    let mut step = Step::new(&be, (n, d, e, k), RouterConfig::new(e, k));
    let want = {
        let mut pass = step.router.forward(&step.x, &step.r, None).unwrap();
        pass.backward(&step.dw, &losses(), None).unwrap().losses
    };
    let before = counters();
    let mut pass = step.router.forward(&step.x, &step.r, None).unwrap();
    let queued = pass.backward_queued(&step.dw, &losses(), None).unwrap();
    assert_eq!(
        (counters() - before).waits,
        0,
        "forward + queued backward waited"
    );
    // The values are device buffers: a framework may keep them there or read them itself.
    let simbal = be.read_value(queued.simbal_value().unwrap()).unwrap();
    assert_eq!(simbal, want.simbal);
    let got = queued.finish().unwrap();
    assert_eq!(
        (counters() - before).waits,
        2,
        "the value read above and finish"
    );
    assert_eq!(got, want);
}

#[test]
fn sequence_level_lbl_waits_once_too() {
    let Some(be) = gpu() else { return };
    let (n, d, e, k) = (128, 32, 16, 2);
    let mut step = Step::new(&be, (n, d, e, k), RouterConfig::new(e, k));
    let losses = LossConfig::none().with_lbl(LblConfig {
        level: LblLevel::Sequence(SeqLayout::BatchMajor { seq_len: 32 }),
        ..LblConfig::default()
    });
    let c = step.count(&losses, Batch::new);
    assert_eq!(c.waits, 1, "{c:?}");
}

#[test]
fn a_non_finite_input_is_still_reported_with_its_position() {
    let Some(be) = gpu() else { return };
    let (n, d, e, k) = (8, 4, 4, 2);
    let mut step = Step::new(&be, (n, d, e, k), RouterConfig::new(e, k));
    let mut xv = values(n * d, 1);
    xv[2 * d + 3] = f32::NAN;
    let x = be.upload(&xv).unwrap();
    let want = SimbalError::NonFinite {
        what: "tokens X",
        row: 2,
        col: 3,
    };
    // The forward does not wait; the backward's one read finds the error, and the router keeps
    // no routing.
    let before = counters();
    let mut pass = step.router.forward(&x, &step.r, None).unwrap();
    assert_eq!((counters() - before).waits, 0);
    let err = pass.backward(&step.dw, &losses(), None).err();
    assert_eq!(err, Some(want.clone()));
    assert!(matches!(step.router.routing(), Err(SimbalError::NoForward)));
    // `check` reads the forward's checks on demand.
    let mut pass = step.router.forward(&x, &step.r, None).unwrap();
    assert_eq!(pass.check().err(), Some(want));
    // A bias entry and a gate gradient entry, each located.
    let mut bias = vec![0.0f32; e];
    bias[1] = f32::INFINITY;
    let bias = be.upload(&bias).unwrap();
    let mut pass = step.router.forward(&step.x, &step.r, Some(&bias)).unwrap();
    let err = pass.backward(&step.dw, &losses(), None).err();
    assert_eq!(
        err,
        Some(SimbalError::NonFinite {
            what: "selection bias",
            row: 0,
            col: 1,
        })
    );
    let mut dwv = values(n * k, 2);
    dwv[5] = f32::NAN;
    let dw = be.upload(&dwv).unwrap();
    let mut pass = step.router.forward(&step.x, &step.r, None).unwrap();
    let err = pass.backward(&dw, &losses(), None).err();
    assert_eq!(
        err,
        Some(SimbalError::NonFinite {
            what: "gate gradient",
            row: 2,
            col: 1,
        })
    );
}
