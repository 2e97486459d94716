//! One bad-input test per [`SimbalError`] variant: each error is produced by a real call on the
//! backend and matched field by field, its message is non-empty, and the router stays usable
//! after it. (`SimbalError` is `#[non_exhaustive]`, so a new variant cannot be caught at compile
//! time: add its test here with it.)

use crate::util::*;
use simbal_core::{
    simbal_loss, update_bias, Backend, BiasUpdateConfig, DropPolicy, LblConfig, LblLevel,
    LossConfig, Router, RouterConfig, RoutingStats, SimBalConfig, SimBalNorm, SimbalError,
    SimbalWorkspace, WeightLayout, ZLossConfig,
};

fn check(
    name: &str,
    what: &str,
    got: Result<(), SimbalError>,
    want: impl Fn(&SimbalError) -> bool,
) {
    match got {
        Err(e) if want(&e) => {
            assert!(!e.to_string().is_empty(), "{name}: {what}: empty message");
        }
        other => panic!("{name}: {what}: got {other:?}"),
    }
}

/// A forwarded router on `(n, d, e, k)` with ones for tokens and a simple weight.
struct Setup<B: Backend> {
    router: Router<B>,
    x: B::Buf,
    r: B::Buf,
    dw: B::Buf,
    n: usize,
    d: usize,
}

fn setup<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    cfg: RouterConfig,
    n: usize,
    d: usize,
) -> Setup<B> {
    let b = fresh(make);
    let e = cfg.experts;
    let x = up(
        &b,
        &(0..n * d)
            .map(|i| (i as f64 * 0.7).sin())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let r = up(
        &b,
        &(0..d * e)
            .map(|i| (i as f64 * 1.3).cos())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let dw = up(&b, &vec![1.0; n * cfg.k]).unwrap();
    let mut router = Router::new(b, cfg).expect("Router::new");
    router.forward(&x, &r, None, n, d).expect("forward");
    Setup {
        router,
        x,
        r,
        dw,
        n,
        d,
    }
}

impl<B: Backend> Setup<B> {
    fn backward(
        &mut self,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<(), SimbalError> {
        self.router
            .backward(&self.x, &self.r, &self.dw, losses, global)
            .map(|_| ())
    }
    fn still_works(&mut self, name: &str) {
        self.router
            .forward(&self.x, &self.r, None, self.n, self.d)
            .unwrap_or_else(|e| panic!("{name}: the router is unusable after an error: {e:?}"));
        self.backward(&LossConfig::simbal(), None)
            .unwrap_or_else(|e| panic!("{name}: the router is unusable after an error: {e:?}"));
    }
}

macro_rules! start {
    ($name:literal, $make:ident) => {
        if acquire($make, $name).is_none() {
            return;
        }
    };
}

/// `ZeroDim`: `N = 0`, `D = 0`, `E = 0`.
pub fn zero_dim<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::zero_dim";
    start!("errors::zero_dim", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 2, 2);
    let x0 = up(s.router.backend(), &[]).unwrap();
    check(N, "N = 0", s.router.forward(&x0, &s.r, None, 0, 2), |e| {
        *e == SimbalError::ZeroDim { what: "N" }
    });
    s.still_works(N);
    let r0 = up(s.router.backend(), &[]).unwrap();
    check(N, "D = 0", s.router.forward(&x0, &r0, None, 2, 0), |e| {
        *e == SimbalError::ZeroDim { what: "D" }
    });
    check(
        N,
        "E = 0",
        Router::new(fresh(make), RouterConfig::new(0, 1)).map(|_| ()),
        |e| *e == SimbalError::ZeroDim { what: "E" },
    );
    check(
        N,
        "logits N = 0",
        s.router.forward_logits(&x0, None, 0),
        |e| *e == SimbalError::ZeroDim { what: "N" },
    );
}

/// `KZero`: `k = 0`.
pub fn k_zero<B: Backend>(make: &dyn Fn() -> Option<B>) {
    start!("errors::k_zero", make);
    check(
        "errors::k_zero",
        "k = 0",
        Router::new(fresh(make), RouterConfig::new(4, 0)).map(|_| ()),
        |e| *e == SimbalError::KZero,
    );
}

/// `KTooLarge`: `k > E`, at construction and in `set_config`.
pub fn k_too_large<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::k_too_large";
    start!("errors::k_too_large", make);
    let want = |e: &SimbalError| *e == SimbalError::KTooLarge { k: 5, experts: 4 };
    check(
        N,
        "k = 5 > E = 4",
        Router::new(fresh(make), RouterConfig::new(4, 5)).map(|_| ()),
        want,
    );
    let mut s = setup(make, RouterConfig::new(4, 2), 3, 2);
    check(
        N,
        "set_config k = 5",
        s.router.set_config(RouterConfig::new(4, 5)),
        want,
    );
    s.still_works(N);
}

/// `LengthMismatch`: wrong lengths of tokens, weight, bias, gate gradient and SimBal gradient.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::length_mismatch";
    start!("errors::length_mismatch", make);
    let mut s = setup(make, RouterConfig::new(3, 2), 4, 2);
    let b = s.router.backend();
    let (x5, r5, bias2, dw3) = (
        up(b, &[0.0; 5]).unwrap(),
        up(b, &[0.0; 5]).unwrap(),
        up(b, &[0.0; 2]).unwrap(),
        up(b, &[0.0; 3]).unwrap(),
    );
    let lm = |what: &'static str, expected: usize, got: usize| {
        move |e: &SimbalError| {
            *e == SimbalError::LengthMismatch {
                what,
                expected,
                got,
            }
        }
    };
    check(
        N,
        "X",
        s.router.forward(&x5, &s.r, None, 4, 2),
        lm("tokens X", 8, 5),
    );
    check(
        N,
        "R",
        s.router.forward(&s.x, &r5, None, 4, 2),
        lm("router weight", 6, 5),
    );
    check(
        N,
        "bias",
        s.router.forward(&s.x, &s.r, Some(&bias2), 4, 2),
        lm("selection bias", 3, 2),
    );
    check(
        N,
        "logits",
        s.router.forward_logits(&x5, None, 4),
        lm("logits", 12, 5),
    );
    s.router.forward(&s.x, &s.r, None, 4, 2).unwrap();
    check(
        N,
        "dW",
        s.router
            .backward(&s.x, &s.r, &dw3, &LossConfig::none(), None)
            .map(|_| ()),
        lm("gate gradient", 8, 3),
    );
    s.still_works(N);
    let b = s.router.backend();
    let mut ws = SimbalWorkspace::new(b, 2, 3).unwrap();
    let mut g5 = up(b, &[0.0; 5]).unwrap();
    check(
        N,
        "SimBal gradient",
        simbal_loss(
            b,
            &SimBalConfig::default(),
            WeightLayout::DxE,
            2,
            3,
            &s.r,
            Some(&mut g5),
            &mut ws,
        )
        .map(|_| ()),
        lm("router gradient", 6, 5),
    );
    check(
        N,
        "SimBal weight",
        simbal_loss(
            b,
            &SimBalConfig::default(),
            WeightLayout::DxE,
            2,
            3,
            &r5,
            None,
            &mut ws,
        )
        .map(|_| ()),
        lm("router weight", 6, 5),
    );
}

/// `GroupsDoNotDivide`: 4 groups of 6 experts, 0 groups.
pub fn groups_do_not_divide<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::groups_do_not_divide";
    start!("errors::groups_do_not_divide", make);
    for groups in [4, 0] {
        check(
            N,
            &format!("{groups} groups of 6"),
            Router::new(fresh(make), RouterConfig::new(6, 1).with_groups(groups, 1)).map(|_| ()),
            |e| *e == SimbalError::GroupsDoNotDivide { groups, experts: 6 },
        );
    }
}

/// `TooManyGroups`: 512 groups of 512 experts.
pub fn too_many_groups<B: Backend>(make: &dyn Fn() -> Option<B>) {
    start!("errors::too_many_groups", make);
    check(
        "errors::too_many_groups",
        "512 groups",
        Router::new(fresh(make), RouterConfig::new(512, 1).with_groups(512, 1)).map(|_| ()),
        |e| matches!(e, SimbalError::TooManyGroups { groups: 512, max } if *max < 512),
    );
}

/// `InvalidTopGroups`: `top_groups` 0 and more than the groups.
pub fn invalid_top_groups<B: Backend>(make: &dyn Fn() -> Option<B>) {
    start!("errors::invalid_top_groups", make);
    for top_groups in [0, 3] {
        check(
            "errors::invalid_top_groups",
            &format!("top_groups = {top_groups} of 2"),
            Router::new(
                fresh(make),
                RouterConfig::new(4, 1).with_groups(2, top_groups),
            )
            .map(|_| ()),
            |e| {
                *e == SimbalError::InvalidTopGroups {
                    top_groups,
                    groups: 2,
                }
            },
        );
    }
}

/// `GroupSelectionTooSmall`: one group of 2 experts kept, `k = 3`.
pub fn group_selection_too_small<B: Backend>(make: &dyn Fn() -> Option<B>) {
    start!("errors::group_selection_too_small", make);
    check(
        "errors::group_selection_too_small",
        "k = 3, 2 experts kept",
        Router::new(fresh(make), RouterConfig::new(8, 3).with_groups(4, 1)).map(|_| ()),
        |e| *e == SimbalError::GroupSelectionTooSmall { k: 3, available: 2 },
    );
}

/// `InvalidCapacityFactor`: 0, negative, NaN, infinite.
pub fn invalid_capacity_factor<B: Backend>(make: &dyn Fn() -> Option<B>) {
    start!("errors::invalid_capacity_factor", make);
    for cf in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        check(
            "errors::invalid_capacity_factor",
            &format!("cf = {cf}"),
            Router::new(
                fresh(make),
                RouterConfig::new(4, 1).with_capacity(cf, DropPolicy::Probs),
            )
            .map(|_| ()),
            |e| matches!(e, SimbalError::InvalidCapacityFactor { value } if value.to_bits() == cf.to_bits()),
        );
    }
}

/// `InvalidCoefficient`: non-finite scale; negative or NaN lambda, alpha, beta, bias rate.
pub fn invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::invalid_coefficient";
    start!("errors::invalid_coefficient", make);
    check(
        N,
        "scale NaN",
        Router::new(fresh(make), RouterConfig::new(4, 1).with_scale(f64::NAN)).map(|_| ()),
        |e| matches!(e, SimbalError::InvalidCoefficient { what: "scale", .. }),
    );
    let mut s = setup(make, RouterConfig::new(3, 1), 3, 2);
    let is = |w: &'static str, v: f64| move |e: &SimbalError| matches!(e, SimbalError::InvalidCoefficient { what, value } if *what == w && value.to_bits() == v.to_bits());
    let sb = |lambda| {
        LossConfig::none().with_simbal(SimBalConfig {
            lambda,
            norm: SimBalNorm::L1,
        })
    };
    check(
        N,
        "lambda < 0",
        s.backward(&sb(-0.1), None),
        is("SimBal lambda", -0.1),
    );
    let lbl = LossConfig::none().with_lbl(LblConfig {
        alpha: f64::NAN,
        ..LblConfig::default()
    });
    check(
        N,
        "alpha NaN",
        s.backward(&lbl, None),
        is("LBL alpha", f64::NAN),
    );
    let z = LossConfig::none().with_z_loss(ZLossConfig { beta: -1.0 });
    check(N, "beta < 0", s.backward(&z, None), is("z-loss beta", -1.0));
    s.still_works(N);
    let b = s.router.backend();
    let mut ws = SimbalWorkspace::new(b, 2, 3).unwrap();
    check(
        N,
        "simbal_loss lambda inf",
        simbal_loss(
            b,
            &SimBalConfig {
                lambda: f64::INFINITY,
                norm: SimBalNorm::L1,
            },
            WeightLayout::DxE,
            2,
            3,
            &s.r,
            None,
            &mut ws,
        )
        .map(|_| ()),
        is("SimBal lambda", f64::INFINITY),
    );
    let mut bias = b.zeros(3).unwrap();
    let stats = RoutingStats::empty(3);
    check(
        N,
        "bias rate < 0",
        update_bias(
            b,
            &BiasUpdateConfig {
                rate: -1e-3,
                centred: false,
            },
            &stats,
            &mut bias,
        ),
        is("bias update rate", -1e-3),
    );
}

/// `SequenceLength`: a sequence length that does not divide `N`, and 0.
pub fn sequence_length<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::sequence_length";
    start!("errors::sequence_length", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    for seq_len in [3, 0] {
        let l = LossConfig::none().with_lbl(LblConfig {
            level: LblLevel::Sequence { seq_len },
            ..LblConfig::default()
        });
        check(
            N,
            &format!("seq_len {seq_len} of 4"),
            s.backward(&l, None),
            |e| *e == SimbalError::SequenceLength { seq_len, tokens: 4 },
        );
    }
    s.still_works(N);
}

/// `NonFinite`: NaN/inf in tokens, weight, bias, logits and gate gradient, with the position;
/// nothing is reported with the check turned off.
pub fn non_finite<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::non_finite";
    start!("errors::non_finite", make);
    let (n, d, e) = (3, 4, 5);
    let mut s = setup(make, RouterConfig::new(e, 2), n, d);
    let b = s.router.backend();
    let mut xv = vec![0.5; n * d];
    xv[d + 2] = f64::NAN;
    xv[2 * d + 3] = f64::INFINITY;
    let x = up(b, &xv).unwrap();
    let mut rv = vec![0.5; d * e];
    rv[2 * e + 4] = f64::NEG_INFINITY;
    let r = up(b, &rv).unwrap();
    let bias = up(b, &[0.0, 0.0, f64::NAN, 0.0, 0.0]).unwrap();
    let mut zv = vec![0.0; n * e];
    zv[2 * e + 1] = f64::NAN;
    let z = up(b, &zv).unwrap();
    let dwv = vec![0.0, 0.0, 0.0, f64::INFINITY, 0.0, 0.0];
    let dw = up(b, &dwv).unwrap();
    let nf = |what: &'static str, row: usize, col: usize| {
        move |err: &SimbalError| *err == SimbalError::NonFinite { what, row, col }
    };
    check(
        N,
        "X",
        s.router.forward(&x, &s.r, None, n, d),
        nf("tokens X", 1, 2),
    );
    check(
        N,
        "R",
        s.router.forward(&s.x, &r, None, n, d),
        nf("router weight", 2, 4),
    );
    check(
        N,
        "bias",
        s.router.forward(&s.x, &s.r, Some(&bias), n, d),
        nf("selection bias", 0, 2),
    );
    check(
        N,
        "logits",
        s.router.forward_logits(&z, None, n),
        nf("logits", 2, 1),
    );
    s.router.forward(&s.x, &s.r, None, n, d).unwrap();
    check(
        N,
        "dW",
        s.router
            .backward(&s.x, &s.r, &dw, &LossConfig::none(), None)
            .map(|_| ()),
        nf("gate gradient", 1, 1),
    );
    s.still_works(N);
    // The check can be turned off: the call then succeeds.
    s.router
        .set_config(RouterConfig::new(e, 2).with_check_finite(false))
        .unwrap();
    s.router
        .forward(&x, &s.r, None, n, d)
        .unwrap_or_else(|err| panic!("{N}: with the check off, forward gave {err:?}"));
}

/// `Overflow`: z-loss of logits beyond `sqrt(max)` (1e30 in f32, 1e200 in f64), SimBal of such a
/// weight; the
/// value is refused, never returned as inf/NaN.
pub fn overflow<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::overflow";
    start!("errors::overflow", make);
    let big = if is_f64::<B::Elem>() { 1e200 } else { 1e30 };
    let (n, e) = (2, 3);
    let b = fresh(make);
    let z = up(&b, &[big, 0.0, -big, 1.0, big, big]).unwrap();
    let dw = up(&b, &[0.0; 2]).unwrap();
    let mut router = Router::new(b, RouterConfig::new(e, 1)).unwrap();
    router.forward_logits(&z, None, n).unwrap();
    let l = LossConfig::none().with_z_loss(ZLossConfig::default());
    check(
        N,
        "z-loss",
        router.backward_logits(&dw, &l, None).map(|_| ()),
        |e| matches!(e, SimbalError::Overflow { .. }),
    );
    let b = router.backend();
    let r = up(b, &[big, 1.0, 0.0, big, 0.5, 0.25]).unwrap();
    let mut ws = SimbalWorkspace::new(b, 2, 3).unwrap();
    for norm in [SimBalNorm::L1, SimBalNorm::FrobeniusSq] {
        let cfg = SimBalConfig { lambda: 0.1, norm };
        check(
            N,
            &format!("SimBal {norm:?}"),
            simbal_loss(b, &cfg, WeightLayout::DxE, 2, 3, &r, None, &mut ws).map(|_| ()),
            |e| matches!(e, SimbalError::Overflow { .. }),
        );
    }
}

/// `MissingGlobalStats`: global-batch LBL without statistics, or with 0 tokens.
pub fn missing_global_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::missing_global_stats";
    start!("errors::missing_global_stats", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    let l = LossConfig::none().with_lbl(LblConfig {
        level: LblLevel::GlobalBatch,
        ..LblConfig::default()
    });
    check(N, "no stats", s.backward(&l, None), |e| {
        *e == SimbalError::MissingGlobalStats
    });
    check(
        N,
        "0 tokens",
        s.backward(&l, Some(&RoutingStats::empty(3))),
        |e| *e == SimbalError::MissingGlobalStats,
    );
    s.still_works(N);
}

/// `StatsMismatch`: global statistics of another expert count; merging mismatched statistics.
pub fn stats_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::stats_mismatch";
    start!("errors::stats_mismatch", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    let l = LossConfig::none().with_lbl(LblConfig {
        level: LblLevel::GlobalBatch,
        ..LblConfig::default()
    });
    let mut g = RoutingStats::empty(4);
    g.tokens = 4;
    check(
        N,
        "global stats of 4 experts",
        s.backward(&l, Some(&g)),
        |e| {
            *e == SimbalError::StatsMismatch {
                expected: 3,
                got: 4,
            }
        },
    );
    let mut a = RoutingStats::empty(3);
    let before = a.clone();
    check(N, "merge 3 with 4", a.merge(&g), |e| {
        *e == SimbalError::StatsMismatch {
            expected: 3,
            got: 4,
        }
    });
    assert_eq!(a, before, "{N}: a failed merge changed the statistics");
    let bad = RoutingStats {
        counts: vec![0; 3],
        score_sums: vec![0.0; 2],
        tokens: 1,
        dropped: 0,
    };
    assert!(
        a.merge(&bad).is_err(),
        "{N}: merged statistics with score sums of the wrong length"
    );
    s.still_works(N);
}

/// `NoForward`: backward, accessors and statistics before any forward, after a failed forward,
/// and token backward after a logits forward.
pub fn no_forward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::no_forward";
    start!("errors::no_forward", make);
    let b = fresh(make);
    let x = up(&b, &[0.5; 6]).unwrap();
    let r = up(&b, &[0.5; 6]).unwrap();
    let dw = up(&b, &[1.0; 3]).unwrap();
    let mut router = Router::new(b, RouterConfig::new(3, 1)).unwrap();
    let nf = |e: &SimbalError| *e == SimbalError::NoForward;
    check(
        N,
        "backward first",
        router
            .backward(&x, &r, &dw, &LossConfig::none(), None)
            .map(|_| ()),
        nf,
    );
    check(
        N,
        "backward_logits first",
        router
            .backward_logits(&dw, &LossConfig::none(), None)
            .map(|_| ()),
        nf,
    );
    check(N, "indices first", router.indices().map(|_| ()), nf);
    check(N, "dx first", router.dx().map(|_| ()), nf);
    check(N, "stats first", router.stats().map(|_| ()), nf);
    check(
        N,
        "routing_entropy first",
        router.routing_entropy().map(|_| ()),
        nf,
    );
    router.forward(&x, &r, None, 3, 2).unwrap();
    let bad = up(router.backend(), &[0.5; 5]).unwrap();
    assert!(router.forward(&bad, &r, None, 3, 2).is_err());
    check(
        N,
        "backward after a failed forward",
        router
            .backward(&x, &r, &dw, &LossConfig::none(), None)
            .map(|_| ()),
        nf,
    );
    let z = up(router.backend(), &[0.5; 9]).unwrap();
    router.forward_logits(&z, None, 3).unwrap();
    check(
        N,
        "token backward after forward_logits",
        router
            .backward(&x, &r, &dw, &LossConfig::none(), None)
            .map(|_| ()),
        nf,
    );
}

/// `Unsupported`: SimBal in `backward_logits`.
pub fn unsupported<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "errors::unsupported";
    start!("errors::unsupported", make);
    let b = fresh(make);
    let z = up(&b, &[0.5, 0.1, 0.2, 0.3]).unwrap();
    let dw = up(&b, &[1.0; 2]).unwrap();
    let mut router = Router::new(b, RouterConfig::new(2, 1)).unwrap();
    router.forward_logits(&z, None, 2).unwrap();
    check(
        N,
        "SimBal on the logits path",
        router
            .backward_logits(&dw, &LossConfig::simbal(), None)
            .map(|_| ()),
        |e| matches!(e, SimbalError::Unsupported { .. }),
    );
    router
        .backward_logits(&dw, &LossConfig::switch(), None)
        .unwrap_or_else(|e| panic!("{N}: unusable after Unsupported: {e:?}"));
}

/// `Backend`: out-of-range expert indices handed to the kernels.
pub fn backend_error<B: Backend>(make: &dyn Fn() -> Option<B>) {
    crate::kernels::refuse_bad_indices(make);
}
