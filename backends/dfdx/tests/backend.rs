//! The dfdx backend against the scalar reference, kernel by kernel and through whole router steps,
//! at the SPEC's tolerances (f64 1e-10, f32 1e-4, relative to the output's scale).

use dfdx::tensor::Cpu;
use dfdx::tensor_ops::Device;
use simbal_core::ops::gemm::gemm_reference;
use simbal_core::{
    Backend, DropPolicy, Gemm, LblConfig, LblLevel, LblNormalization, LossConfig, Reference, Rng,
    Router, RouterConfig, RoutingStats, Scalar, ScoreFn, SimBalConfig, SimBalNorm, SimbalError,
    SimbalWorkspace, WeightLayout, ZLossConfig,
};
use simbal_dfdx::Dfdx;

fn rand_vec<T: Scalar>(rng: &mut Rng, len: usize) -> Vec<T> {
    let mut v = vec![T::zero(); len];
    rng.fill_normal(1.0, &mut v);
    v
}

/// `max |a - b| <= tol * max(1, max |b|)`.
fn close<T: Scalar>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.to_f64_lossy().abs()));
    let err = a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        m.max((x.to_f64_lossy() - y.to_f64_lossy()).abs())
    });
    assert!(
        err <= T::CONFORMANCE_TOL * scale,
        "{what}: max error {err:e} over scale {scale:e} (tol {:e})",
        T::CONFORMANCE_TOL
    );
}

fn close_scalar<T: Scalar>(what: &str, a: T, b: T) {
    close(what, &[a], &[b]);
}

fn down<B: Backend>(b: &B, buf: &B::Buf) -> Vec<B::Elem> {
    let mut v = vec![B::Elem::of(0.0); b.len(buf)];
    b.download(buf, &mut v).expect("download");
    v
}

fn check_gemm<T: Scalar + dfdx::shapes::Dtype>()
where
    Cpu: Device<T>,
{
    let be = Dfdx::<T>::cpu();
    let mut rng = Rng::new(3);
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 4), (7, 2, 9), (4, 4, 1), (2, 3, 0)] {
        for ta in [false, true] {
            for tb in [false, true] {
                for &(alpha, beta) in &[(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-2.0, 0.25)] {
                    let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
                    g.trans_a = ta;
                    g.trans_b = tb;
                    let a: Vec<T> = rand_vec(&mut rng, m * k);
                    let b: Vec<T> = rand_vec(&mut rng, k * n);
                    let mut c: Vec<T> = rand_vec(&mut rng, m * n);
                    if beta == 0.0 && !c.is_empty() {
                        c[0] = T::nan(); // beta = 0 ignores C, even NaN
                    }
                    let mut cd = be.upload(&c).unwrap();
                    be.gemm(
                        &g,
                        &be.upload(&a).unwrap(),
                        &be.upload(&b).unwrap(),
                        &mut cd,
                    )
                    .unwrap();
                    gemm_reference(&g, &a, &b, &mut c);
                    close(
                        &format!("gemm {m}x{n}x{k} ta={ta} tb={tb} a={alpha} b={beta}"),
                        &down(&be, &cd),
                        &c,
                    );
                }
            }
        }
    }
    // Wrong operand lengths are errors, not panics.
    let mut c = be.zeros(4).unwrap();
    let err = be
        .gemm(
            &Gemm::new(2, 2, 2),
            &be.zeros(3).unwrap(),
            &be.zeros(4).unwrap(),
            &mut c,
        )
        .unwrap_err();
    assert!(matches!(err, SimbalError::LengthMismatch { .. }), "{err:?}");
}

#[test]
fn gemm_matches_reference_f64() {
    check_gemm::<f64>();
}

#[test]
fn gemm_matches_reference_f32() {
    check_gemm::<f32>();
}

/// One router configuration and loss set, run on both backends and compared.
fn check_step<T: Scalar + dfdx::shapes::Dtype>(
    cfg: RouterConfig,
    losses: LossConfig,
    n: usize,
    d: usize,
    seed: u64,
    with_bias: bool,
) where
    Cpu: Device<T>,
{
    let e = cfg.experts;
    let k = cfg.k;
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rand_vec(&mut rng, n * d);
    let r: Vec<T> = rand_vec(&mut rng, d * e);
    let dw: Vec<T> = rand_vec(&mut rng, n * k);
    let bias: Vec<T> = rand_vec::<T>(&mut rng, e)
        .iter()
        .map(|v| *v * T::of(0.05))
        .collect();
    let global = RoutingStats {
        counts: (0..e as u64).map(|i| 3 + i * 2).collect(),
        score_sums: vec![1.0; e],
        tokens: 40,
        dropped: 0,
    };

    let rb = Reference::<T>::new();
    let db = Dfdx::<T>::cpu();
    let mut rr = Router::new(rb, cfg).unwrap();
    let mut dr = Router::new(db.clone(), cfg).unwrap();
    let (xr, rr_w, dwr, br) = (x.clone(), r.clone(), dw.clone(), bias.clone());
    let (xd, rd_w, dwd, bd) = (
        db.upload(&x).unwrap(),
        db.upload(&r).unwrap(),
        db.upload(&dw).unwrap(),
        db.upload(&bias).unwrap(),
    );
    rr.forward(&xr, &rr_w, with_bias.then_some(&br), n, d)
        .unwrap();
    dr.forward(&xd, &rd_w, with_bias.then_some(&bd), n, d)
        .unwrap();
    let tag = format!("{cfg:?} {losses:?} n={n} d={d}");
    assert_eq!(
        rr.indices().unwrap(),
        dr.indices().unwrap(),
        "indices {tag}"
    );
    assert_eq!(
        rr.dropped().unwrap(),
        dr.dropped().unwrap(),
        "dropped {tag}"
    );
    assert_eq!(rr.counts().unwrap(), dr.counts().unwrap(), "counts {tag}");
    assert_eq!(
        rr.dispatch_offsets().unwrap(),
        dr.dispatch_offsets().unwrap(),
        "offsets {tag}"
    );
    close(
        &format!("logits {tag}"),
        &down(&db, dr.logits().unwrap()),
        rr.logits().unwrap(),
    );
    close(
        &format!("scores {tag}"),
        &down(&db, dr.scores().unwrap()),
        rr.scores().unwrap(),
    );
    close(
        &format!("gates {tag}"),
        &down(&db, dr.gates().unwrap()),
        rr.gates().unwrap(),
    );
    close_scalar(
        &format!("entropy {tag}"),
        dr.routing_entropy().unwrap(),
        rr.routing_entropy().unwrap(),
    );
    let lr = rr
        .backward(&xr, &rr_w, &dwr, &losses, Some(&global))
        .unwrap();
    let ld = dr
        .backward(&xd, &rd_w, &dwd, &losses, Some(&global))
        .unwrap();
    close_scalar(&format!("simbal {tag}"), ld.simbal, lr.simbal);
    close_scalar(&format!("lbl {tag}"), ld.lbl, lr.lbl);
    close_scalar(&format!("z-loss {tag}"), ld.z_loss, lr.z_loss);
    close(
        &format!("dz {tag}"),
        &down(&db, dr.dz().unwrap()),
        rr.dz().unwrap(),
    );
    close(
        &format!("dx {tag}"),
        &down(&db, dr.dx().unwrap()),
        rr.dx().unwrap(),
    );
    close(
        &format!("dr {tag}"),
        &down(&db, dr.dr().unwrap()),
        rr.dr().unwrap(),
    );
    let (sr, sd) = (rr.stats().unwrap(), dr.stats().unwrap());
    assert_eq!(sr.counts, sd.counts);
    close(
        &format!("score sums {tag}"),
        &sd.score_sums.iter().map(|&v| T::of(v)).collect::<Vec<T>>(),
        &sr.score_sums.iter().map(|&v| T::of(v)).collect::<Vec<T>>(),
    );
}

fn configs(e: usize, k: usize) -> Vec<RouterConfig> {
    let base = RouterConfig::new(e, k);
    vec![
        base,
        base.with_renormalize(false),
        base.with_score(ScoreFn::Sigmoid),
        base.with_score(ScoreFn::Sigmoid)
            .with_renormalize(false)
            .with_scale(2.5),
        base.with_scale(0.5).with_layout(WeightLayout::ExD),
        base.with_groups(4, 2),
        base.with_capacity(0.6, DropPolicy::Probs),
        base.with_capacity(0.8, DropPolicy::Position)
            .with_layout(WeightLayout::ExD),
    ]
}

fn loss_sets(n: usize) -> Vec<LossConfig> {
    vec![
        LossConfig::none(),
        LossConfig::simbal(),
        LossConfig::none().with_simbal(SimBalConfig {
            lambda: 0.3,
            norm: SimBalNorm::FrobeniusSq,
        }),
        LossConfig::none().with_simbal(SimBalConfig {
            lambda: 0.7,
            norm: SimBalNorm::ScaleFree,
        }),
        LossConfig::switch(),
        LossConfig::none().with_lbl(LblConfig {
            alpha: 0.05,
            level: LblLevel::Sequence { seq_len: n / 2 },
            normalization: LblNormalization::HuggingFace,
        }),
        LossConfig::none().with_lbl(LblConfig {
            alpha: 0.02,
            level: LblLevel::GlobalBatch,
            normalization: LblNormalization::Switch,
        }),
        LossConfig::simbal()
            .with_lbl(LblConfig::default())
            .with_z_loss(ZLossConfig { beta: 0.01 }),
    ]
}

fn check_all<T: Scalar + dfdx::shapes::Dtype>()
where
    Cpu: Device<T>,
{
    let (n, d, e, k) = (12, 6, 8, 2);
    let mut seed = 10;
    for cfg in configs(e, k) {
        for losses in loss_sets(n) {
            seed += 1;
            check_step::<T>(cfg, losses, n, d, seed, seed % 2 == 0);
        }
    }
    // k = E and E = 1.
    check_step::<T>(
        RouterConfig::new(3, 3),
        LossConfig::simbal(),
        5,
        4,
        99,
        false,
    );
    check_step::<T>(
        RouterConfig::new(1, 1),
        LossConfig::switch(),
        5,
        4,
        98,
        true,
    );
}

#[test]
fn router_steps_match_reference_f64() {
    check_all::<f64>();
}

#[test]
fn router_steps_match_reference_f32() {
    check_all::<f32>();
}

/// SimBal composed from dfdx ops against the independent direct formula, every variant, both
/// layouts.
#[test]
fn simbal_matches_direct_formula() {
    let be = Dfdx::<f64>::cpu();
    let mut rng = Rng::new(5);
    for &(d, e) in &[(6, 4), (3, 5), (1, 1), (8, 8)] {
        for layout in [WeightLayout::DxE, WeightLayout::ExD] {
            for norm in [
                SimBalNorm::L1,
                SimBalNorm::FrobeniusSq,
                SimBalNorm::ScaleFree,
            ] {
                let cfg = SimBalConfig { lambda: 0.3, norm };
                let mut r: Vec<f64> = rand_vec(&mut rng, d * e);
                if norm == SimBalNorm::ScaleFree && e > 1 {
                    // A zero column stays zero through the normalisation.
                    for i in 0..d {
                        let at = match layout {
                            WeightLayout::DxE => i * e + 1,
                            WeightLayout::ExD => d + i,
                        };
                        r[at] = 0.0;
                    }
                }
                let init: Vec<f64> = rand_vec(&mut rng, d * e);
                let mut want = init.clone();
                let lw = simbal_core::ops::simbal::simbal_direct(
                    &cfg,
                    layout,
                    d,
                    e,
                    &r,
                    Some(&mut want),
                );
                let rb = be.upload(&r).unwrap();
                let mut g = be.upload(&init).unwrap();
                let mut ws = SimbalWorkspace::new(&be, d, e).unwrap();
                let l =
                    simbal_core::simbal_loss(&be, &cfg, layout, d, e, &rb, Some(&mut g), &mut ws)
                        .unwrap();
                let tag = format!("{norm:?} {layout:?} d={d} e={e}");
                close_scalar(&format!("loss {tag}"), l, lw);
                close(&format!("grad {tag}"), &down(&be, &g), &want);
            }
        }
    }
}

/// SPEC: finite logits never give non-finite outputs, even at 1e30 in f32.
#[test]
fn huge_logits_stay_finite_f32() {
    let be = Dfdx::<f32>::cpu();
    let (n, e, k) = (3, 4, 2);
    let z: Vec<f32> = vec![
        1e30, 1e30, -1e30, 0.0, //
        -1e30, 5e29, 1e30, -3e29, //
        0.0, 0.0, 0.0, 0.0,
    ];
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        let cfg = RouterConfig::new(e, k).with_score(score);
        let mut dr = Router::new(be.clone(), cfg).unwrap();
        let mut rr = Router::new(Reference::<f32>::new(), cfg).unwrap();
        dr.forward_logits(&be.upload(&z).unwrap(), None, n).unwrap();
        rr.forward_logits(&z, None, n).unwrap();
        let p = down(&be, dr.scores().unwrap());
        assert!(p.iter().all(|v| v.is_finite()), "{score:?}: {p:?}");
        close(&format!("{score:?} scores"), &p, rr.scores().unwrap());
        assert_eq!(dr.indices().unwrap(), rr.indices().unwrap());
        // Ties go to the lower index: row 0 picks experts 0 and 1.
        assert_eq!(&dr.indices().unwrap()[..2], &[0, 1]);
        let dw = vec![1.0f32; n * k];
        let losses = LossConfig::none().with_lbl(LblConfig::default());
        dr.backward_logits(&be.upload(&dw).unwrap(), &losses, None)
            .unwrap();
        rr.backward_logits(&dw, &losses, None).unwrap();
        let dz = down(&be, dr.dz().unwrap());
        assert!(dz.iter().all(|v| v.is_finite()));
        close(&format!("{score:?} dz"), &dz, rr.dz().unwrap());
    }
}

#[test]
fn kernels_refuse_bad_lengths() {
    let be = Dfdx::<f64>::cpu();
    let cfg = RouterConfig::new(4, 2);
    let z = be.zeros(8).unwrap();
    let mut p = be.zeros(7).unwrap();
    let mut idx = be.idx_zeros(4).unwrap();
    let mut gates = be.zeros(4).unwrap();
    let err = be
        .route_rows(&cfg, 2, &z, None, &mut p, &mut idx, &mut gates)
        .unwrap_err();
    assert!(
        matches!(err, SimbalError::LengthMismatch { what: "scores", .. }),
        "{err:?}"
    );
    let mut buf = be.zeros(3).unwrap();
    assert!(be.write(&mut buf, &[1.0, 2.0]).is_err());
    assert!(be.download(&buf, &mut [0.0; 4]).is_err());
    let mut out = be.zeros(4).unwrap();
    let err = be
        .group_column_sums(6, 2, 4, &be.zeros(12).unwrap(), &mut out)
        .unwrap_err();
    assert!(matches!(err, SimbalError::SequenceLength { .. }), "{err:?}");
    // An out-of-range index reaches the backward kernel: an error, not a dfdx panic.
    let p = be.upload(&[0.25; 8]).unwrap();
    let idx = vec![0, 9, 1, 2];
    let mut dz = be.zeros(8).unwrap();
    let err = be
        .router_backward_rows(
            &cfg,
            2,
            &z,
            &p,
            &idx,
            &be.zeros(4).unwrap(),
            &vec![0; 4],
            &be.zeros(4).unwrap(),
            None,
            0.0,
            &mut dz,
        )
        .unwrap_err();
    assert!(matches!(err, SimbalError::Backend { .. }), "{err:?}");
    assert!(!be.is_host());
    assert_eq!(be.name(), "dfdx-cpu-f64");
    assert_eq!(Dfdx::<f32>::cpu().name(), "dfdx-cpu-f32");
}

#[test]
fn routing_entropy_and_lse_match_reference() {
    let be = Dfdx::<f64>::cpu();
    let rb = Reference::<f64>::new();
    let (n, e) = (5, 3);
    // Row 1 all zero (skipped), row 2 has zeros (0 ln 0 = 0), rows unnormalised (sigmoid-like).
    let p = vec![
        0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 0.0, 0.7, 0.1, 0.9, 0.9, 0.9, 1e-300, 0.5, 0.25,
    ];
    let a = be.routing_entropy(n, e, &be.upload(&p).unwrap()).unwrap();
    let b = rb.routing_entropy(n, e, &p).unwrap();
    close_scalar("entropy", a, b);
    assert!(matches!(
        be.routing_entropy(0, e, &be.zeros(0).unwrap()),
        Err(SimbalError::ZeroDim { .. })
    ));
    let z = vec![
        1.0, -2.0, 3.0, 700.0, 700.0, -700.0, 0.0, 0.0, 0.0, 1e-3, 2e-3, 3e-3, -5.0, -6.0, -7.0,
    ];
    close_scalar(
        "lse^2 sum",
        be.lse_sq_sum(n, e, &be.upload(&z).unwrap()).unwrap(),
        rb.lse_sq_sum(n, e, &z).unwrap(),
    );
}

#[test]
fn max_abs_sees_nan_and_infinity() {
    let be = Dfdx::<f64>::cpu();
    let rb = Reference::<f64>::new();
    for v in [
        vec![],
        vec![-3.0, 2.0, 1.0],
        vec![0.5, f64::NEG_INFINITY, 1.0],
        vec![1.0, f64::NAN, f64::INFINITY],
    ] {
        let a = be.max_abs(&be.upload(&v).unwrap()).unwrap();
        let b = rb.max_abs(&v).unwrap();
        assert!(a == b || (a.is_nan() && b.is_nan()), "{v:?}: {a} vs {b}");
    }
    assert_eq!(be.max_abs(&be.zeros(0).unwrap()).unwrap(), 0.0);
    // Empty buffers download without touching dfdx's iterator.
    be.download(&be.zeros(0).unwrap(), &mut []).unwrap();
}

/// Saturated sigmoid rows (every chosen score 0) with renormalisation and a large scale: the
/// gate gradient must not become `inf * 0 = NaN`.
#[test]
fn saturated_sigmoid_rows_give_finite_gradients() {
    for scale in [1.0, 16.0] {
        let cfg = RouterConfig::new(4, 2)
            .with_score(ScoreFn::Sigmoid)
            .with_scale(scale);
        let z = vec![-1e30f32, -1e30, -1e30, -1e30, 0.3, -0.2, 0.1, 0.0];
        let dw = vec![0.5f32, -1.0, 0.25, 2.0];
        let be = Dfdx::<f32>::cpu();
        let mut dr = Router::new(be.clone(), cfg).unwrap();
        let mut rr = Router::new(Reference::<f32>::new(), cfg).unwrap();
        dr.forward_logits(&be.upload(&z).unwrap(), None, 2).unwrap();
        rr.forward_logits(&z, None, 2).unwrap();
        let losses = LossConfig::none().with_lbl(LblConfig::default());
        dr.backward_logits(&be.upload(&dw).unwrap(), &losses, None)
            .unwrap();
        rr.backward_logits(&dw, &losses, None).unwrap();
        let dz = down(&be, dr.dz().unwrap());
        assert!(dz.iter().all(|v| v.is_finite()), "{dz:?}");
        close("saturated dz", &dz, rr.dz().unwrap());
    }
}
