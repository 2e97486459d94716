//! Quick end-to-end checks of the reference path: the router objective's analytic gradient
//! against central differences on one fixed, kink-free case per configuration. The full
//! property-based suite lives in `simbal-conformance`.

use simbal_core::*;

fn objective(
    cfg: &RouterConfig,
    losses: &LossConfig,
    x: &[f64],
    r: &[f64],
    dw: &[f64],
    n: usize,
    d: usize,
) -> (f64, Vec<u32>, Vec<u32>) {
    let mut router = Router::new(Reference::<f64>::new(), *cfg).unwrap();
    let mut pass = router.forward(x, r, None).unwrap();
    assert_eq!((pass.shape().n, pass.shape().d), (n, d));
    let lin: f64 = pass.gates().iter().zip(dw).map(|(g, w)| g * w).sum();
    let (idx, dropped) = (pass.indices().to_vec(), pass.dropped().to_vec());
    let v = pass.backward(dw, losses, None).unwrap().losses;
    (lin + v.total, idx, dropped)
}

fn check(cfg: RouterConfig, losses: LossConfig, n: usize, d: usize, seed: u64) {
    let e = cfg.experts;
    let k = cfg.k;
    let mut rng = Rng::new(seed);
    let mut x = vec![0.0; n * d];
    rng.fill_normal(1.0, &mut x);
    let mut r = vec![0.0; d * e];
    rng.fill_normal(0.7, &mut r);
    let mut dw = vec![0.0; n * k];
    rng.fill_normal(1.0, &mut dw);
    let mut router = Router::new(Reference::<f64>::new(), cfg).unwrap();
    let mut pass = router.forward(&x, &r, None).unwrap();
    let grads = pass.backward(&dw, &losses, None).unwrap();
    let (dx, dr) = (grads.dx.to_vec(), grads.dr.to_vec());
    let (_, idx0, drop0) = objective(&cfg, &losses, &x, &r, &dw, n, d);
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for (which, grad) in [(0, &dx), (1, &dr)] {
        let len = if which == 0 { x.len() } else { r.len() };
        for i in 0..len {
            let (mut xp, mut rp) = (x.clone(), r.clone());
            let (mut xm, mut rm) = (x.clone(), r.clone());
            if which == 0 {
                xp[i] += h;
                xm[i] -= h;
            } else {
                rp[i] += h;
                rm[i] -= h;
            }
            let (fp, ip, dp) = objective(&cfg, &losses, &xp, &rp, &dw, n, d);
            let (fm, im, dm) = objective(&cfg, &losses, &xm, &rm, &dw, n, d);
            assert!(
                ip == idx0 && im == idx0 && dp == drop0 && dm == drop0,
                "kink hit"
            );
            let fd = (fp - fm) / (2.0 * h);
            let err = (fd - grad[i]).abs() / (1.0 + grad[i].abs());
            worst = worst.max(err);
        }
    }
    assert!(worst < 1e-6, "{cfg:?} {losses:?}: worst FD error {worst}");
}

#[test]
fn router_gradients_match_finite_differences() {
    let all = LossConfig::simbal()
        .with_simbal(SimBalConfig {
            lambda: 0.1,
            norm: SimBalNorm::FrobeniusSq,
        })
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default());
    check(RouterConfig::new(4, 2), all, 5, 3, 1);
    check(
        RouterConfig::new(4, 2)
            .with_score(ScoreFn::Sigmoid)
            .with_scale(2.5),
        all,
        5,
        3,
        2,
    );
    check(
        RouterConfig::new(4, 2).with_renormalize(false),
        all,
        5,
        3,
        3,
    );
    check(
        RouterConfig::new(6, 2).with_layout(WeightLayout::ExD),
        all.with_lbl(LblConfig {
            level: LblLevel::sequences(2),
            ..LblConfig::default()
        }),
        4,
        3,
        4,
    );
    check(
        RouterConfig::new(4, 2).with_capacity(0.75, DropPolicy::Probs),
        all,
        6,
        3,
        5,
    );
    check(
        RouterConfig::new(8, 2).with_groups(4, 2),
        LossConfig::none().with_simbal(SimBalConfig {
            lambda: 0.3,
            norm: SimBalNorm::ScaleFree,
        }),
        4,
        5,
        6,
    );
}
