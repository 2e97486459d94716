//! The `Backend` implementation against the core's `Reference<f32>` through the core's `Router`:
//! whole forward/backward steps, every output compared.
mod common;
use common::{close_scaled as close, gpu, read_f as f, read_u as u, Rng};
use simbal_core::config::{LblLevel, LblNormalization};
use simbal_core::memory::view;
use simbal_core::router::kernels::Dispatch;
use simbal_core::{
    Backend, DropPolicy, LblConfig, LossConfig, Memory, Reference, Router, RouterConfig,
    RoutingStats, ScoreFn, SimBalConfig, SimBalNorm, SimbalError, WeightLayout, ZLossConfig,
};

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
    stats: RoutingStats,
}

/// One forward and backward through the core's router; every output read back.
fn step<B: Backend<Elem = f32> + Clone>(
    b: B,
    cfg: RouterConfig,
    losses: &LossConfig,
    x: &[f32],
    r: &[f32],
    bias: Option<&[f32]>,
    dw: &[f32],
) -> Out {
    let (xb, rb, dwb) = (
        b.upload(x).unwrap(),
        b.upload(r).unwrap(),
        b.upload(dw).unwrap(),
    );
    let db = bias.map(|v| b.upload(v).unwrap());
    let mut router = Router::new(b.clone(), cfg).unwrap();
    let (xv, rv) = (view::<B>(&xb), view::<B>(&rb));
    let mut pass = router.forward(xv, rv, db.as_ref().map(view::<B>)).unwrap();
    let offsets = u(&b, pass.dispatch_offsets());
    let kept = offsets[cfg.experts] as usize;
    let (idx, dropped, counts) = (
        u(&b, pass.indices()),
        u(&b, pass.dropped()),
        u(&b, pass.counts()),
    );
    let order = u(&b, pass.dispatch_order())[..kept].to_vec();
    let (p, gates) = (f(&b, pass.scores()), f(&b, pass.gates()));
    let stats = pass.stats().unwrap();
    let entropy = pass.routing_entropy().unwrap();
    let g = pass.backward(view::<B>(&dwb), losses, None).unwrap();
    let l = g.losses;
    Out {
        idx,
        dropped,
        counts,
        order,
        offsets,
        p,
        gates,
        dz: f(&b, g.dz),
        dx: f(&b, g.dx),
        dr: f(&b, g.dr),
        losses: [l.simbal, l.lbl, l.z_loss, l.total],
        entropy,
        stats,
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
    let (gs, ws) = (&got.stats, &want.stats);
    assert_eq!(
        (&gs.counts, gs.tokens, gs.dropped),
        (&ws.counts, ws.tokens, ws.dropped),
        "{tag}: stats"
    );
    let sums = |s: &RoutingStats| s.score_sums.iter().map(|&v| v as f32).collect::<Vec<_>>();
    close(&format!("{tag}: score sums"), &sums(gs), &sums(ws), 1e-5);
}

#[test]
fn router_steps_match_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    let lbl = |level| LblConfig {
        alpha: 0.01,
        level,
        normalization: LblNormalization::Switch,
        ..LblConfig::default()
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
                .with_lbl(lbl(LblLevel::sequences(16)))
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
        let want = step(Reference::<f32>::new(), cfg, &losses, &x, &r, bias, &dw);
        let got = step(g.clone(), cfg, &losses, &x, &r, bias, &dw);
        compare(&format!("case {i}: {cfg:?} {losses:?}"), &got, &want);
    }
}

#[test]
fn errors_are_typed() {
    let Some(g) = gpu() else { return };
    // Out-of-range indices reach the kernels only through user buffers: core's check asks the
    // device (`idx_all_below`) and refuses them.
    let cfg = RouterConfig::new(3, 1);
    let idx = g.idx_upload(&[0, 3]).unwrap();
    assert!(!g.idx_all_below(&idx, 3).unwrap());
    assert!(g.idx_all_below(&idx, 4).unwrap());
    let mut gates = g.upload(&[0.5, 0.5]).unwrap();
    let (mut dr, mut c, mut o, mut off) = (
        g.idx_zeros(2).unwrap(),
        g.idx_zeros(3).unwrap(),
        g.idx_zeros(2).unwrap(),
        g.idx_zeros(4).unwrap(),
    );
    let r = Dispatch {
        cfg: &cfg,
        n: 2,
        idx: &idx,
        gates: &mut gates,
        dropped: &mut dr,
        counts: &mut c,
        order: &mut o,
        offsets: &mut off,
    }
    .check(&g)
    .and_then(|a| g.dispatch(a));
    assert!(matches!(r, Err(SimbalError::Backend { .. })), "{r:?}");
    // Indices the router's own forward wrote pass without a device reduction (their bound).
    let x = g.upload(&[1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0]).unwrap();
    let mut router = Router::new(g.clone(), RouterConfig::new(3, 1)).unwrap();
    let w = g.upload(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
    let ok = g.upload(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let pass = router.forward(&ok, &w, None).unwrap();
    assert_eq!(pass.indices().bound, Some(3));
    assert!(g.idx_all_below(pass.indices(), 3).unwrap());
    // Non-finite values are located.
    match g.check_finite("x", 2, &x) {
        Err(SimbalError::NonFinite { row: 1, col: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    let max_abs = |b: &simbal_cubecl::DevBuf<f32>| g.read_value(&g.max_abs(b).unwrap()).unwrap();
    assert!(max_abs(&x).is_nan());
    let y = g.upload(&[1.0, -7.5, 3.0]).unwrap();
    assert_eq!(max_abs(&y), 7.5);
    // Longer than one cube's stride, the largest and a NaN in the last cube; empty is 0.
    let mut long = vec![0.5f32; 3000];
    long[2999] = -9.0;
    assert_eq!(max_abs(&g.upload(&long).unwrap()), 9.0);
    long[2998] = f32::NAN;
    assert!(max_abs(&g.upload(&long).unwrap()).is_nan());
    assert_eq!(max_abs(&g.upload(&[]).unwrap()), 0.0);
    // Lengths.
    let mut z = g.zeros(3).unwrap();
    assert!(matches!(
        g.write(&mut z, &[1.0; 4]),
        Err(SimbalError::LengthMismatch { .. })
    ));
}
