//! The dfdx backend against the scalar reference, kernel by kernel and through whole router steps,
//! at the SPEC's tolerances (f64 1e-10, f32 1e-4, relative to the output's scale).

mod common;

use common::{close, close_scalar, down, rand_vec, refused, NORMS};
use dfdx::tensor::Cpu;
use dfdx::tensor_ops::Device;
use simbal_core::gemm::gemm_reference;
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{BackwardRequest, Logits, Route, RouteRequest, RouterBackward};
use simbal_core::tokens::Groups;
use simbal_core::zloss::LseSqSum;
use simbal_core::{
    Backend, DropPolicy, Gemm, GemmArgs, Gradients, LblConfig, LblCounts, LblLevel,
    LblNormalization, LblScores, LossConfig, Memory, Reference, Rng, Router, RouterConfig, Routing,
    RoutingStats, Scalar, ScoreFn, SeqLayout, SimBalConfig, SimBalNorm, SimbalError,
    SimbalWorkspace, WeightLayout, ZLossConfig,
};
use simbal_dfdx::Dfdx;

/// Element types the backend runs in on dfdx's `Cpu`.
trait Elem: Scalar + dfdx::shapes::Dtype {}
impl<T: Scalar + dfdx::shapes::Dtype> Elem for T where Cpu: Device<T> {}

fn check_gemm<T: Elem>()
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
                    let (ad, bd) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
                    let args = GemmArgs {
                        gemm: g,
                        a: &ad,
                        b: &bd,
                        c: &mut cd,
                    };
                    be.gemm(args.check(&be).unwrap()).unwrap();
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
    let (a, b, mut c) = (
        be.zeros(3).unwrap(),
        be.zeros(4).unwrap(),
        be.zeros(4).unwrap(),
    );
    let args = GemmArgs {
        gemm: Gemm::new(2, 2, 2),
        a: &a,
        b: &b,
        c: &mut c,
    };
    let err = refused(args.check(&be));
    assert!(matches!(err, SimbalError::LengthMismatch { .. }), "{err:?}");
}

/// Every buffer of a dfdx routing against the reference's: index buffers exactly, element
/// buffers to tolerance.
fn compare_routing<T: Elem>(
    tag: &str,
    be: &Dfdx<T>,
    d: &Routing<Dfdx<T>>,
    r: &Routing<Reference<T>>,
) where
    Cpu: Device<T>,
{
    assert_eq!(d.shape(), r.shape(), "shape {tag}");
    for (what, got, want) in [
        ("indices", d.indices(), r.indices()),
        ("dropped", d.dropped(), r.dropped()),
        ("counts", d.counts(), r.counts()),
        ("dispatch order", d.dispatch_order(), r.dispatch_order()),
        (
            "dispatch offsets",
            d.dispatch_offsets(),
            r.dispatch_offsets(),
        ),
    ] {
        assert_eq!(got, want, "{what} {tag}");
    }
    for (what, got, want) in [
        ("logits", d.logits(), r.logits()),
        ("scores", d.scores(), r.scores()),
        ("gates", d.gates(), r.gates()),
    ] {
        close(&format!("{what} {tag}"), &down(be, got), want);
    }
}

/// The loss values and gradients of a dfdx backward against the reference's.
fn compare_gradients<T: Elem>(
    tag: &str,
    be: &Dfdx<T>,
    d: &Gradients<'_, Dfdx<T>>,
    r: &Gradients<'_, Reference<T>>,
) where
    Cpu: Device<T>,
{
    let (ld, lr) = (d.losses, r.losses);
    close(
        &format!("loss values {tag}"),
        &[ld.simbal, ld.lbl, ld.z_loss, ld.total],
        &[lr.simbal, lr.lbl, lr.z_loss, lr.total],
    );
    for (what, got, want) in [("dz", d.dz, r.dz), ("dx", d.dx, r.dx), ("dr", d.dr, r.dr)] {
        close(&format!("{what} {tag}"), &down(be, got), want);
    }
}

/// One router configuration and loss set, run on both backends and compared.
fn check_step<T: Elem>(
    cfg: RouterConfig,
    losses: LossConfig,
    (n, d): (usize, usize),
    seed: u64,
    with_bias: bool,
    mask: Option<&[u32]>,
) where
    Cpu: Device<T>,
{
    let e = cfg.experts;
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rand_vec(&mut rng, n * d);
    let r: Vec<T> = rand_vec(&mut rng, d * e);
    let dw: Vec<T> = rand_vec(&mut rng, n * cfg.k);
    let bias: Vec<T> = rand_vec::<T>(&mut rng, e)
        .iter()
        .map(|v| *v * T::of(0.05))
        .collect();
    let global = RoutingStats {
        counts: (0..e as u64).map(|i| 3 + i * 2).collect(),
        routed_counts: (0..e as u64).map(|i| 4 + i).collect(),
        score_sums: vec![1.0; e],
        tokens: 40,
        dropped: 0,
    };

    let db = Dfdx::<T>::cpu();
    let mut rr = Router::new(Reference::<T>::new(), cfg).unwrap();
    let mut dr = Router::new(db.clone(), cfg).unwrap();
    let [xd, rd, dwd, bd] = [&x, &r, &dw, &bias].map(|v| db.upload(v).unwrap());
    let (mut br, mut bdf) = (simbal_core::Batch::new(), simbal_core::Batch::new());
    if with_bias {
        (br, bdf) = (br.bias(bias.as_slice()), bdf.bias(&bd));
    }
    if let Some(m) = mask {
        (br, bdf) = (br.mask(m), bdf.mask(m));
    }
    let mut pr = rr.forward_batch(&x, &r, br).unwrap();
    let mut pd = dr.forward_batch(&xd, &rd, bdf).unwrap();
    let tag = format!("{cfg:?} {losses:?} n={n} d={d} mask={mask:?}");
    compare_routing(&tag, &db, &pd, &pr);
    close_scalar(
        &format!("entropy {tag}"),
        pd.routing_entropy().unwrap(),
        pr.routing_entropy().unwrap(),
    );
    let (sr, sd) = (pr.stats().unwrap(), pd.stats().unwrap());
    assert_eq!(sr.counts, sd.counts);
    assert_eq!(sr.routed_counts, sd.routed_counts);
    assert_eq!(sr.tokens, sd.tokens);
    let in_t = |v: &[f64]| v.iter().map(|&s| T::of(s)).collect::<Vec<T>>();
    close(
        &format!("score sums {tag}"),
        &in_t(&sd.score_sums),
        &in_t(&sr.score_sums),
    );
    let gr = pr.backward(&dw, &losses, Some(&global)).unwrap();
    let gd = pd.backward(&dwd, &losses, Some(&global)).unwrap();
    compare_gradients(&tag, &db, &gd, &gr);
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
        base.with_score(ScoreFn::SqrtSoftplus),
        base.with_score(ScoreFn::SqrtSoftplus)
            .with_renormalize(false)
            .with_capacity(0.7, DropPolicy::Probs)
            .with_min_capacity(2),
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
            level: LblLevel::sequences(n / 2),
            normalization: LblNormalization::HuggingFace,
            ..LblConfig::default()
        }),
        LossConfig::none().with_lbl(LblConfig {
            alpha: 0.03,
            level: LblLevel::Sequence(SeqLayout::SequenceMajor { batch: 3 }),
            scores: LblScores::Raw,
            counts: LblCounts::Dispatched,
            ..LblConfig::default()
        }),
        LossConfig::none().with_lbl(LblConfig {
            alpha: 0.02,
            level: LblLevel::GlobalBatch,
            normalization: LblNormalization::Switch,
            shard_factor: 2.0,
            ..LblConfig::default()
        }),
        LossConfig::simbal()
            .with_lbl(LblConfig::default())
            .with_z_loss(ZLossConfig { beta: 0.01 }),
    ]
}

fn check_all<T: Elem>()
where
    Cpu: Device<T>,
{
    let (n, d, e, k) = (12, 6, 8, 2);
    let mut seed = 10;
    // Tokens 2, 7 and 8 are padding; the second mask leaves sequence-major sequence 2
    // (tokens 2, 5, 8, 11) and the first batch-major sequence without a valid token.
    let masks: [&[u32]; 2] = [
        &[1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1],
        &[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0],
    ];
    for cfg in configs(e, k) {
        for losses in loss_sets(n) {
            seed += 1;
            let mask = match seed % 3 {
                0 => None,
                m => Some(masks[m as usize - 1]),
            };
            check_step::<T>(cfg, losses, (n, d), seed, seed % 2 == 0, mask);
        }
    }
    // Every token masked.
    check_step::<T>(
        RouterConfig::new(e, k).with_score(ScoreFn::Sigmoid),
        LossConfig::switch().with_z_loss(ZLossConfig { beta: 0.1 }),
        (n, d),
        97,
        false,
        Some(&[0; 12]),
    );
    // k = E and E = 1.
    check_step::<T>(
        RouterConfig::new(3, 3),
        LossConfig::simbal(),
        (5, 4),
        99,
        false,
        None,
    );
    check_step::<T>(
        RouterConfig::new(1, 1),
        LossConfig::switch(),
        (5, 4),
        98,
        true,
        None,
    );
}

/// A `#[test]` per element type of each generic check.
macro_rules! in_f64_and_f32 {
    ($($check:ident => $f64:ident, $f32:ident;)*) => {$(
        #[test]
        fn $f64() {
            $check::<f64>();
        }
        #[test]
        fn $f32() {
            $check::<f32>();
        }
    )*};
}

in_f64_and_f32! {
    check_gemm => gemm_matches_reference_f64, gemm_matches_reference_f32;
    check_all => router_steps_match_reference_f64, router_steps_match_reference_f32;
}

/// SimBal composed from dfdx ops against the independent direct formula, every variant, both
/// layouts.
#[test]
fn simbal_matches_direct_formula() {
    let be = Dfdx::<f64>::cpu();
    let mut rng = Rng::new(5);
    for &(d, e) in &[(6, 4), (3, 5), (1, 1), (8, 8)] {
        for layout in [WeightLayout::DxE, WeightLayout::ExD] {
            for norm in NORMS {
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
                let lw = simbal_core::simbal::reference::simbal_direct(
                    &cfg,
                    layout,
                    d,
                    e,
                    &r,
                    Some(&mut want),
                );
                let rb = be.upload(&r).unwrap();
                let mut g = be.upload(&init).unwrap();
                let mut ws = SimbalWorkspace::new(&be, layout, d, e).unwrap();
                let l = simbal_core::simbal_loss(&be, &cfg, &rb, Some(&mut g), &mut ws).unwrap();
                let tag = format!("{norm:?} {layout:?} d={d} e={e}");
                close_scalar(&format!("loss {tag}"), l, lw);
                close(&format!("grad {tag}"), &down(&be, &g), &want);
            }
        }
    }
}

/// Routes `z` (`n x E`) from logits on both backends, compares the routing, then runs the LBL
/// backward on both and returns the dfdx `dZ` after comparing it too.
fn logits_step(cfg: RouterConfig, n: usize, z: &[f32], dw: &[f32]) -> Vec<f32> {
    let be = Dfdx::<f32>::cpu();
    let mut dr = Router::new(be.clone(), cfg).unwrap();
    let mut rr = Router::new(Reference::<f32>::new(), cfg).unwrap();
    let zd = be.upload(z).unwrap();
    let mut pd = dr.forward_logits(&zd, None).unwrap();
    let mut pr = rr.forward_logits(z, None).unwrap();
    assert_eq!(pd.tokens(), n);
    let tag = format!("{cfg:?}");
    compare_routing(&tag, &be, &pd, &pr);
    let p = down(&be, pd.scores());
    assert!(p.iter().all(|v| v.is_finite()), "{tag}: {p:?}");
    let losses = LossConfig::none().with_lbl(LblConfig::default());
    let gd = pd.backward(&be.upload(dw).unwrap(), &losses, None).unwrap();
    let gr = pr.backward(dw, &losses, None).unwrap();
    let dz = down(&be, gd.dz);
    assert!(dz.iter().all(|v| v.is_finite()), "{tag}: {dz:?}");
    close(&format!("dz {tag}"), &dz, gr.dz);
    close_scalar(&format!("lbl {tag}"), gd.losses.lbl, gr.losses.lbl);
    dz
}

/// SPEC: finite logits never give non-finite outputs, even at 1e30 in f32.
#[test]
fn huge_logits_stay_finite_f32() {
    let z: Vec<f32> = vec![
        1e30, 1e30, -1e30, 0.0, //
        -1e30, 5e29, 1e30, -3e29, //
        0.0, 0.0, 0.0, 0.0,
    ];
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid, ScoreFn::SqrtSoftplus] {
        let cfg = RouterConfig::new(4, 2).with_score(score);
        logits_step(cfg, 3, &z, &[1.0; 6]);
        // Ties go to the lower index: row 0 picks experts 0 and 1.
        let be = Dfdx::<f32>::cpu();
        let mut router = Router::new(be.clone(), cfg).unwrap();
        let pass = router
            .forward_logits(&be.upload(&z).unwrap(), None)
            .unwrap();
        assert_eq!(&pass.indices()[..2], &[0, 1]);
    }
}

/// Saturated sigmoid rows (every chosen score 0) with renormalisation and a large scale: the
/// gate gradient must not become `inf * 0 = NaN`.
#[test]
fn saturated_sigmoid_rows_give_finite_gradients() {
    for scale in [1.0, 16.0] {
        let cfg = RouterConfig::new(4, 2)
            .with_score(ScoreFn::Sigmoid)
            .with_scale(scale);
        let z = [-1e30f32, -1e30, -1e30, -1e30, 0.3, -0.2, 0.1, 0.0];
        logits_step(cfg, 2, &z, &[0.5, -1.0, 0.25, 2.0]);
    }
}

/// The reductions `route` and `router_backward` return are there exactly when asked, and equal
/// the reference's; `dZ` does not depend on what was asked.
#[test]
fn kernel_sums_follow_the_request() {
    let (n, d, e, k) = (6, 3, 5, 2);
    let be = Dfdx::<f64>::cpu();
    let mut rng = Rng::new(21);
    let (x, r, dw): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        rand_vec(&mut rng, n * d),
        rand_vec(&mut rng, d * e),
        rand_vec(&mut rng, n * k),
    );
    let [xd, rd, dwd] = [&x, &r, &dw].map(|v| be.upload(v).unwrap());
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        let cfg = RouterConfig::new(e, k).with_score(score);
        let mut z_ref = vec![0.0; n * e];
        gemm_reference(&Gemm::new(n, e, d), &x, &r, &mut z_ref);
        let mut dz_first: Option<Vec<f64>> = None;
        for (asked, z_coef) in [(false, 0.0), (true, 0.0), (true, 0.01)] {
            let (mut z, mut p, mut gates) = (
                be.zeros(n * e).unwrap(),
                be.zeros(n * e).unwrap(),
                be.zeros(n * k).unwrap(),
            );
            let (mut idx, dropped) = (vec![0u32; n * k], vec![0u32; n * k]);
            let sums = be
                .route(
                    Route {
                        cfg: &cfg,
                        n,
                        logits: Logits::Tokens {
                            gemm: Gemm::new(n, e, d),
                            x: &xd,
                            r: &rd,
                        },
                        bias: None,
                        z: &mut z,
                        p: &mut p,
                        idx: &mut idx[..],
                        gates: &mut gates,
                        plain: None,
                        request: RouteRequest { max_abs_z: asked },
                    }
                    .check(&be)
                    .unwrap(),
                )
                .unwrap();
            close("logits", &down(&be, &z), &z_ref);
            let want_max_z = simbal_core::validate::max_abs(&z_ref);
            assert_eq!(sums.max_abs_z.is_some(), asked);
            if let Some(m) = sums.max_abs_z {
                close_scalar("max |Z|", m, want_max_z);
            }
            let mut dz = be.zeros(n * e).unwrap();
            let sums = be
                .router_backward(
                    RouterBackward {
                        cfg: &cfg,
                        n,
                        z: &z,
                        p: &p,
                        idx: &idx[..],
                        gates: &gates,
                        dropped: &dropped[..],
                        dw: &dwd,
                        groups: Groups::whole(n),
                        lbl: None,
                        z_coef,
                        dz: &mut dz,
                        request: BackwardRequest {
                            lse_sq_sum: asked,
                            max_abs_dz: asked,
                        },
                    }
                    .check(&be)
                    .unwrap(),
                )
                .unwrap();
            let dzh = down(&be, &dz);
            assert_eq!(sums.lse_sq_sum.is_some(), asked);
            assert_eq!(sums.max_abs_dz.is_some(), asked);
            if let (Some(l), Some(m)) = (sums.lse_sq_sum, sums.max_abs_dz) {
                close_scalar("lse^2 sum", l, simbal_core::zloss::lse_sq_sum(e, &z_ref));
                close_scalar("max |dZ|", m, simbal_core::validate::max_abs(&dzh));
            }
            if z_coef == 0.0 {
                match &dz_first {
                    None => dz_first = Some(dzh),
                    Some(first) => close("dZ without and with sums", &dzh, first),
                }
            }
        }
    }
}

#[test]
fn memory_and_kernel_checks() {
    let be = Dfdx::<f64>::cpu();
    let cfg = RouterConfig::new(4, 2);
    // Core's checks refuse bad lengths before the kernel runs.
    let mut z = be.zeros(8).unwrap();
    let (mut p, mut gates, mut idx) = (be.zeros(7).unwrap(), be.zeros(4).unwrap(), vec![0u32; 4]);
    let route = Route {
        cfg: &cfg,
        n: 2,
        logits: Logits::Given,
        bias: None,
        z: &mut z,
        p: &mut p,
        idx: &mut idx[..],
        gates: &mut gates,
        plain: None,
        request: RouteRequest::default(),
    };
    let err = refused(route.check(&be));
    assert!(
        matches!(err, SimbalError::LengthMismatch { what: "scores", .. }),
        "{err:?}"
    );
    let (a, mut out) = (be.zeros(12).unwrap(), be.zeros(4).unwrap());
    let sums = GroupSums {
        n: 6,
        cols: 2,
        groups: Groups::Runs { len: 4 },
        normalize: false,
        a: &a,
        out: &mut out,
    };
    let err = refused(sums.check(&be));
    assert!(matches!(err, SimbalError::SequenceLength { .. }), "{err:?}");
    // An out-of-range index is found in the host index buffer: an error, not a dfdx panic.
    let p = be.upload(&[0.25; 8]).unwrap();
    let (zeros4, mut dz) = (be.zeros(4).unwrap(), be.zeros(8).unwrap());
    let backward = RouterBackward {
        cfg: &cfg,
        n: 2,
        z: &z,
        p: &p,
        idx: &[0, 9, 1, 2][..],
        gates: &zeros4,
        dropped: &[0; 4][..],
        dw: &zeros4,
        groups: Groups::whole(2),
        lbl: None,
        z_coef: 0.0,
        dz: &mut dz,
        request: BackwardRequest::default(),
    };
    let err = refused(backward.check(&be));
    assert!(matches!(err, SimbalError::Backend { .. }), "{err:?}");
    // Transfers check their lengths; element buffers lend no host view, index buffers do.
    let mut buf = be.zeros(3).unwrap();
    assert!(be.write(&mut buf, &[1.0, 2.0]).is_err());
    assert!(be.download(&buf, &mut [0.0; 4]).is_err());
    assert!(be.host(&buf).is_none());
    let mut ib = be.idx_upload(&[1, 2]).unwrap();
    assert_eq!(be.idx_host(&ib), Some(&[1, 2][..]));
    be.idx_write(&mut ib, &[3, 4]).unwrap();
    assert!(be.idx_write(&mut ib, &[3]).is_err());
    assert_eq!(ib, [3, 4]);
    assert_eq!(be.name(), "dfdx-cpu-f64");
    assert_eq!(Dfdx::<f32>::cpu().name(), "dfdx-cpu-f32");
}

#[test]
fn routing_entropy_and_lse_match_reference() {
    let be = Dfdx::<f64>::cpu();
    let (n, e) = (5, 3);
    // Row 1 all zero (skipped), row 2 has zeros (0 ln 0 = 0), rows unnormalised (sigmoid-like).
    let p = vec![
        0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 0.0, 0.7, 0.1, 0.9, 0.9, 0.9, 1e-300, 0.5, 0.25,
    ];
    let pd = be.upload(&p).unwrap();
    let entropy = Entropy {
        n,
        groups: Groups::whole(n),
        e,
        p: &pd,
    };
    let a = be.routing_entropy(entropy.check(&be).unwrap()).unwrap();
    close_scalar(
        "entropy",
        a,
        simbal_core::routing_entropy(n, e, &p).unwrap(),
    );
    let empty = be.zeros(0).unwrap();
    assert!(matches!(
        Entropy {
            n: 0,
            groups: Groups::whole(0),
            e,
            p: &empty
        }
        .check(&be),
        Err(SimbalError::ZeroDim { .. })
    ));
    let z = vec![
        1.0, -2.0, 3.0, 700.0, 700.0, -700.0, 0.0, 0.0, 0.0, 1e-3, 2e-3, 3e-3, -5.0, -6.0, -7.0,
    ];
    let zd = be.upload(&z).unwrap();
    for scores in [None, Some((ScoreFn::Softmax, &pd))] {
        let args = LseSqSum {
            n,
            groups: Groups::whole(n),
            e,
            z: &zd,
            scores,
        };
        close_scalar(
            "lse^2 sum",
            be.lse_sq_sum(args.check(&be).unwrap()).unwrap(),
            simbal_core::zloss::lse_sq_sum(e, &z),
        );
    }
}

#[test]
fn max_abs_sees_nan_and_infinity() {
    let be = Dfdx::<f64>::cpu();
    for v in [
        vec![],
        vec![-3.0, 2.0, 1.0],
        vec![0.5, f64::NEG_INFINITY, 1.0],
        vec![1.0, f64::NAN, f64::INFINITY],
    ] {
        let a = be.max_abs(&be.upload(&v).unwrap()).unwrap();
        let b = simbal_core::validate::max_abs(&v);
        assert!(a == b || (a.is_nan() && b.is_nan()), "{v:?}: {a} vs {b}");
    }
    assert_eq!(be.max_abs(&be.zeros(0).unwrap()).unwrap(), 0.0);
    // Empty buffers download without touching dfdx's iterator.
    be.download(&be.zeros(0).unwrap(), &mut []).unwrap();
}

/// The masked and grouped kernels (`route` with the plain top-k, `router_backward` with group
/// ids, a mask and the normalised LBL, `group_column_sums`, `lse_sq_sum`, `routing_entropy`)
/// against core's reference rows, every score function.
#[test]
fn grouped_and_masked_kernels_match_reference() {
    use simbal_core::router::reference::{route_rows, router_backward_rows};
    use simbal_core::tokens::{HostGroups, MASKED};
    let be = Dfdx::<f64>::cpu();
    let (n, e, k) = (8, 5, 2);
    let mut rng = Rng::new(77);
    let z: Vec<f64> = rand_vec::<f64>(&mut rng, n * e)
        .iter()
        .map(|v| 40.0 * v)
        .collect();
    let bias: Vec<f64> = rand_vec(&mut rng, e);
    let dw: Vec<f64> = rand_vec(&mut rng, n * k);
    let ids = [0, 2, MASKED, 1, 0, MASKED, 2, 1];
    let all_masked = [MASKED; 8];
    let [bd, dwd] = [&bias, &dw].map(|v| be.upload(v).unwrap());
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid, ScoreFn::SqrtSoftplus] {
        let cfg = RouterConfig::new(e, k).with_score(score).with_groups(5, 3);
        let tag = format!("{score:?}");
        // route, with the plain top-k.
        let (mut zc, mut p, mut gates) = (
            be.upload(&z).unwrap(),
            be.zeros(n * e).unwrap(),
            be.zeros(n * k).unwrap(),
        );
        let (mut idx, mut plain) = (vec![0u32; n * k], vec![0u32; n * k]);
        be.route(
            Route {
                cfg: &cfg,
                n,
                logits: Logits::Given,
                bias: Some(&bd),
                z: &mut zc,
                p: &mut p,
                idx: &mut idx[..],
                gates: &mut gates,
                plain: Some(&mut plain[..]),
                request: RouteRequest::default(),
            }
            .check(&be)
            .unwrap(),
        )
        .unwrap();
        let (mut pw, mut iw, mut gw, mut plw) = (
            vec![0.0; n * e],
            vec![0u32; n * k],
            vec![0.0; n * k],
            vec![0u32; n * k],
        );
        route_rows(
            &cfg,
            &z,
            Some(&bias),
            &mut pw,
            &mut iw,
            &mut gw,
            Some(&mut plw),
        );
        close(&format!("scores {tag}"), &down(&be, &p), &pw);
        close(&format!("gates {tag}"), &down(&be, &gates), &gw);
        assert_eq!(idx, iw, "indices {tag}");
        assert_eq!(plain, plw, "plain top-k {tag}");
        // group_column_sums, runs and ids, raw and normalised.
        let ids1 = [0, 0, MASKED, 0, 0, MASKED, 0, 0];
        for normalize in [false, true] {
            for (groups, hg, g) in [
                (Groups::Runs { len: 4 }, HostGroups::Runs { len: 4 }, 2),
                (
                    Groups::Ids {
                        ids: &ids[..],
                        count: 3,
                    },
                    HostGroups::Ids {
                        ids: &ids[..],
                        count: 3,
                    },
                    3,
                ),
                (
                    Groups::Ids {
                        ids: &ids1[..],
                        count: 1,
                    },
                    HostGroups::Ids {
                        ids: &ids1[..],
                        count: 1,
                    },
                    1,
                ),
            ] {
                let mut out = be.zeros(g * e).unwrap();
                let args = GroupSums {
                    n,
                    cols: e,
                    groups,
                    normalize,
                    a: &p,
                    out: &mut out,
                };
                be.group_column_sums(args.check(&be).unwrap()).unwrap();
                let mut want = vec![0.0; g * e];
                simbal_core::lbl::reference::group_column_sums(e, hg, normalize, &pw, &mut want);
                close(
                    &format!("group sums {tag} {g} normalize={normalize}"),
                    &down(&be, &out),
                    &want,
                );
            }
        }
        // router_backward with group ids, the normalised LBL and z-loss.
        let coef: Vec<f64> = rand_vec(&mut rng, 3 * e);
        let cd = be.upload(&coef).unwrap();
        let dropped = vec![0u32; n * k];
        for (gids, normalize) in [(&ids, false), (&ids, true), (&all_masked, true)] {
            let mut dz = be.zeros(n * e).unwrap();
            let sums = be
                .router_backward(
                    RouterBackward {
                        cfg: &cfg,
                        n,
                        z: &zc,
                        p: &p,
                        idx: &idx[..],
                        gates: &gates,
                        dropped: &dropped[..],
                        dw: &dwd,
                        groups: Groups::Ids {
                            ids: &gids[..],
                            count: 3,
                        },
                        lbl: Some(simbal_core::router::kernels::LblCoef {
                            coef: &cd,
                            normalize,
                        }),
                        z_coef: 0.03,
                        dz: &mut dz,
                        request: BackwardRequest {
                            lse_sq_sum: true,
                            max_abs_dz: false,
                        },
                    }
                    .check(&be)
                    .unwrap(),
                )
                .unwrap();
            let hg = HostGroups::Ids {
                ids: &gids[..],
                count: 3,
            };
            let mut want = vec![0.0; n * e];
            router_backward_rows(
                &cfg,
                &z,
                &pw,
                &iw,
                &gw,
                &dropped,
                &dw,
                |r| hg.group_of(r).map(|b| &coef[b * e..(b + 1) * e]),
                normalize,
                0.03,
                |r| hg.group_of(r).is_some(),
                &mut want,
            );
            let t = format!("{tag} normalize={normalize} ids={gids:?}");
            close(&format!("dz {t}"), &down(&be, &dz), &want);
            let lse = simbal_core::zloss::lse_sq_sum_valid(e, hg, &z);
            close_scalar(&format!("lse^2 {t}"), sums.lse_sq_sum.unwrap(), lse);
            // The same masks through lse_sq_sum and routing_entropy.
            let groups = Groups::Ids {
                ids: &gids[..],
                count: 3,
            };
            let args = LseSqSum {
                n,
                groups,
                e,
                z: &zc,
                scores: None,
            };
            close_scalar(
                &format!("lse_sq_sum {t}"),
                be.lse_sq_sum(args.check(&be).unwrap()).unwrap(),
                lse,
            );
            let args = Entropy {
                n,
                groups,
                e,
                p: &p,
            };
            close_scalar(
                &format!("entropy {t}"),
                be.routing_entropy(args.check(&be).unwrap()).unwrap(),
                simbal_core::metrics::routing_entropy_valid(n, e, hg, &pw).unwrap(),
            );
        }
    }
}
