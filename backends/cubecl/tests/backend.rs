//! The `Backend` implementation against the core's `Reference<f32>` through the core's `Router`:
//! whole forward/backward steps, every output compared.
mod common;
use common::Rng;
use simbal_core::config::{LblLevel, LblNormalization};
use simbal_core::{
    Backend, DropPolicy, LblConfig, LossConfig, Reference, Router, RouterConfig, ScoreFn,
    SimBalConfig, SimBalNorm, SimbalError, WeightLayout, ZLossConfig,
};
use simbal_cubecl::CubeclBackend;

type Wgpu = cubecl::wgpu::WgpuRuntime;

fn gpu() -> Option<CubeclBackend<Wgpu>> {
    match CubeclBackend::<Wgpu>::try_new(&Default::default()) {
        Some(b) => Some(b),
        None if std::env::var_os("CI").is_some() => panic!("no wgpu adapter and CI is set"),
        None => {
            eprintln!("SKIPPED: no wgpu adapter");
            None
        }
    }
}

#[derive(Debug, PartialEq)]
struct Out {
    idx: Vec<u32>,
    dropped: Vec<u32>,
    counts: Vec<u32>,
    order: Vec<u32>,
    offsets: Vec<u32>,
    p: Vec<f32>,
    gates: Vec<f32>,
    dz: Vec<f32>,
    dx: Vec<f32>,
    dr: Vec<f32>,
    losses: [f32; 4],
    entropy: f32,
}

fn f<B: Backend<Elem = f32>>(b: &B, x: &B::Buf) -> Vec<f32> {
    let mut h = vec![0.0; b.len(x)];
    b.download(x, &mut h).unwrap();
    h
}
fn u<B: Backend<Elem = f32>>(b: &B, x: &B::IdxBuf) -> Vec<u32> {
    let mut h = vec![0; b.idx_len(x)];
    b.idx_download(x, &mut h).unwrap();
    h
}

#[allow(clippy::too_many_arguments)]
fn step<B: Backend<Elem = f32>>(
    b: B,
    cfg: RouterConfig,
    losses: &LossConfig,
    n: usize,
    d: usize,
    x: &[f32],
    r: &[f32],
    bias: Option<&[f32]>,
    dw: &[f32],
) -> Out {
    let (dx_, dr_, dw_) = (
        b.upload(x).unwrap(),
        b.upload(r).unwrap(),
        b.upload(dw).unwrap(),
    );
    let db = bias.map(|v| b.upload(v).unwrap());
    let mut router = Router::new(b, cfg).unwrap();
    router.forward(&dx_, &dr_, db.as_ref(), n, d).unwrap();
    let l = router.backward(&dx_, &dr_, &dw_, losses, None).unwrap();
    let b = router.backend();
    let kept = router
        .dispatch_offsets()
        .map(|o| u(b, o)[cfg.experts] as usize)
        .unwrap();
    Out {
        idx: u(b, router.indices().unwrap()),
        dropped: u(b, router.dropped().unwrap()),
        counts: u(b, router.counts().unwrap()),
        order: u(b, router.dispatch_order().unwrap())[..kept].to_vec(),
        offsets: u(b, router.dispatch_offsets().unwrap()),
        p: f(b, router.scores().unwrap()),
        gates: f(b, router.gates().unwrap()),
        dz: f(b, router.dz().unwrap()),
        dx: f(b, router.dx().unwrap()),
        dr: f(b, router.dr().unwrap()),
        losses: [l.simbal, l.lbl, l.z_loss, l.total],
        entropy: router.routing_entropy().unwrap(),
    }
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn compare(tag: &str, got: &Out, want: &Out) {
    assert_eq!(got.idx, want.idx, "{tag}: indices");
    assert_eq!(got.dropped, want.dropped, "{tag}: dropped");
    assert_eq!(got.counts, want.counts, "{tag}: counts");
    assert_eq!(got.offsets, want.offsets, "{tag}: offsets");
    assert_eq!(got.order, want.order, "{tag}: order");
    close(&format!("{tag}: p"), &got.p, &want.p, 1e-5);
    close(&format!("{tag}: gates"), &got.gates, &want.gates, 1e-5);
    close(&format!("{tag}: dz"), &got.dz, &want.dz, 1e-4);
    close(&format!("{tag}: dx"), &got.dx, &want.dx, 1e-4);
    close(&format!("{tag}: dr"), &got.dr, &want.dr, 1e-4);
    close(&format!("{tag}: losses"), &got.losses, &want.losses, 1e-4);
    close(
        &format!("{tag}: entropy"),
        &[got.entropy],
        &[want.entropy],
        1e-5,
    );
}

#[test]
fn router_steps_match_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    let lbl = |level| LblConfig {
        alpha: 0.01,
        level,
        normalization: LblNormalization::Switch,
    };
    let cases: Vec<(RouterConfig, LossConfig, usize, usize)> = vec![
        (RouterConfig::new(8, 2), LossConfig::simbal(), 64, 16),
        (
            RouterConfig::new(8, 2).with_layout(WeightLayout::ExD),
            LossConfig::switch(),
            64,
            16,
        ),
        (
            RouterConfig::new(32, 4).with_capacity(1.0, DropPolicy::Probs),
            LossConfig::simbal()
                .with_lbl(lbl(LblLevel::Sequence { seq_len: 16 }))
                .with_z_loss(ZLossConfig::default()),
            128,
            48,
        ),
        (
            RouterConfig::new(16, 3)
                .with_score(ScoreFn::Sigmoid)
                .with_capacity(0.7, DropPolicy::Position),
            LossConfig::none()
                .with_simbal(SimBalConfig {
                    lambda: 0.1,
                    norm: SimBalNorm::ScaleFree,
                })
                .with_z_loss(ZLossConfig::default()),
            100,
            20,
        ),
        (
            RouterConfig::new(64, 6)
                .with_groups(8, 3)
                .with_renormalize(false)
                .with_scale(2.5),
            LossConfig::none()
                .with_simbal(SimBalConfig {
                    lambda: 0.1,
                    norm: SimBalNorm::FrobeniusSq,
                })
                .with_lbl(lbl(LblLevel::MicroBatch)),
            50,
            70,
        ),
    ];
    for (i, (cfg, losses, n, d)) in cases.into_iter().enumerate() {
        let e = cfg.experts;
        let x = rng.vec(n * d);
        let r: Vec<f32> = rng.vec(d * e).iter().map(|v| v * 0.2).collect();
        let dw = rng.vec(n * cfg.k);
        let bias: Vec<f32> = (0..e).map(|_| rng.below(3) as f32 * 0.01).collect();
        let bias = (i % 2 == 1).then_some(&bias[..]);
        let want = step(
            Reference::<f32>::new(),
            cfg,
            &losses,
            n,
            d,
            &x,
            &r,
            bias,
            &dw,
        );
        let got = step(g.clone(), cfg, &losses, n, d, &x, &r, bias, &dw);
        compare(&format!("case {i}: {cfg:?} {losses:?}"), &got, &want);
    }
}

#[test]
fn errors_are_typed() {
    let Some(g) = gpu() else { return };
    // Out-of-range indices reach the kernels only through user buffers.
    let cfg = RouterConfig::new(3, 1);
    let idx = g.idx_upload(&[0, 3]).unwrap();
    let mut gates = g.upload(&[0.5, 0.5]).unwrap();
    let (mut dr, mut c, mut o, mut off) = (
        g.idx_zeros(2).unwrap(),
        g.idx_zeros(3).unwrap(),
        g.idx_zeros(2).unwrap(),
        g.idx_zeros(4).unwrap(),
    );
    let r = g.dispatch(&cfg, 2, &idx, &mut gates, &mut dr, &mut c, &mut o, &mut off);
    assert!(matches!(r, Err(SimbalError::Backend { .. })), "{r:?}");
    // Non-finite values are located.
    let x = g.upload(&[1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0]).unwrap();
    match g.check_finite("x", 2, &x) {
        Err(SimbalError::NonFinite { row: 1, col: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(g.max_abs(&x).unwrap().is_nan());
    let y = g.upload(&[1.0, -7.5, 3.0]).unwrap();
    assert_eq!(g.max_abs(&y).unwrap(), 7.5);
    // Lengths.
    let mut z = g.zeros(3).unwrap();
    assert!(matches!(
        g.write(&mut z, &[1.0; 4]),
        Err(SimbalError::LengthMismatch { .. })
    ));
}
