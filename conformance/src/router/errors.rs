//! The router's errors (see [`crate::harness::errors`]): shapes, configurations, lengths, a
//! pass asked for before any forward, SimBal on the logits path, and out-of-range indices.

use super::bufs::{Bufs, Shape};
use super::kernels::{bwd_dz_run, dispatch_run, BwdIn};
use crate::harness::errors::{check, new_router, refused, setup, start, Input};
use crate::harness::kernel::Zeros;
use crate::harness::util::*;
use simbal_core::memory::{idx_view, view};
use simbal_core::router::kernels::{BackwardRequest, RouteRequest};
use simbal_core::{
    Backend, Batch, DropPolicy, Gemm, LblConfig, LblLevel, LossConfig, Router, RouterConfig,
    Scalar, SeqLayout, SimbalError,
};

/// `ZeroDim`: `N = 0`, `D = 0`, `E = 0`.
pub fn zero_dim<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::zero_dim";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 2, 2);
    let x0 = s.up(&[]);
    check(N, "N = 0", s.forward(Some(&x0), None, None), |e| {
        *e == SimbalError::ZeroDim { what: "N" }
    });
    s.still_works(N);
    check(N, "D = 0", s.forward(Some(&x0), Some(&x0), None), |e| {
        *e == SimbalError::ZeroDim { what: "D" }
    });
    check(N, "E = 0", new_router(make, RouterConfig::new(0, 1)), |e| {
        *e == SimbalError::ZeroDim { what: "E" }
    });
    check(
        N,
        "logits N = 0",
        s.router.forward_logits(view::<B>(&x0), None).map(|_| ()),
        |e| *e == SimbalError::ZeroDim { what: "N" },
    );
}

/// `KZero`: `k = 0`.
pub fn k_zero<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let want = |e: &SimbalError| *e == SimbalError::KZero;
    let cases = [("k = 0".into(), RouterConfig::new(4, 0), want)];
    configs_refused(make, "router::errors::k_zero", cases);
}

/// `KTooLarge`: `k > E`, at construction and in `set_config`.
pub fn k_too_large<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::k_too_large";
    start!(N, make);
    let want = |e: &SimbalError| *e == SimbalError::KTooLarge { k: 5, experts: 4 };
    check(
        N,
        "k = 5 > E = 4",
        new_router(make, RouterConfig::new(4, 5)),
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

/// `LengthMismatch` from the router's entry points: tokens not a multiple of `D`, a weight not
/// a multiple of `E`, logits not a multiple of `E`, a bias or gate gradient of the wrong
/// length; and from the precondition functions of the router's kernels.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::length_mismatch";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 2), 4, 2);
    let (x5, r5, bias2, dw3) = (
        s.up(&[0.0; 5]),
        s.up(&[0.0; 5]),
        s.up(&[0.0; 2]),
        s.up(&[0.0; 3]),
    );
    // D = 2 from the weight: 5 tokens' worth is not a multiple (the next one is 6).
    let lm = |what, (expected, got)| SimbalError::LengthMismatch {
        what,
        expected,
        got,
    };
    let cases = [
        (Input::X, &x5, (6, 5)),
        (Input::R, &r5, (6, 5)),
        (Input::Bias, &bias2, (3, 2)),
        (Input::Logits, &x5, (6, 5)),
        (Input::LogitsBias, &bias2, (3, 2)),
        (Input::Dw, &dw3, (8, 3)),
    ];
    s.refuses(N, lm, cases);
    s.still_works(N);
    kernel_lengths(N, &s.io);
}

/// The router's kernels refuse buffers of the wrong length in their precondition functions:
/// each call gets the right buffers but one.
fn kernel_lengths<B: Backend>(name: &str, c: &B) {
    let cfg = RouterConfig::new(3, 2);
    let shape = Shape {
        d: 2,
        ..Shape::of(&cfg, 2)
    };
    let (n, d, e, k) = (shape.n, shape.d, shape.e, shape.k);
    let right = || Bufs::new(shape, &Zeros(c)).expect("zeros");
    let buf = |len: usize| c.zeros(len).expect("zeros");
    let mut b = right();
    b.p = buf(n * k); // not n E
    let given = b.route(&cfg, None, RouteRequest::default());
    refused(name, "route (given logits)", given.check(c));
    let mut b = right();
    b.x = buf(5); // not n D
    let tokens = b.route(&cfg, Some(Gemm::new(n, e, d)), RouteRequest::default());
    refused(name, "route (logits from tokens)", tokens.check(c));
    let mut b = right();
    b.offsets = c.idx_zeros(e).expect("idx_zeros"); // not E + 1
    refused(name, "dispatch", b.dispatch(&cfg).check(c));
    let mut b = right();
    b.z = buf(n * d); // not n E
    let backward = b.backward(&cfg, false, 0.0, BackwardRequest::default());
    refused(name, "router_backward", backward.check(c));
}

/// `Router::new` refuses each `(what, cfg, want)` with an error `want` accepts (skipped when
/// the backend is unavailable).
fn configs_refused<B: Backend, W: Fn(&SimbalError) -> bool>(
    make: &dyn Fn() -> Option<B>,
    name: &str,
    cases: impl IntoIterator<Item = (String, RouterConfig, W)>,
) {
    start!(name, make);
    for (what, cfg, want) in cases {
        check(name, &what, new_router(make, cfg), want);
    }
}

/// `GroupsDoNotDivide`: 4 groups of 6 experts, 0 groups.
pub fn groups_do_not_divide<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let cases = [4, 0].map(|groups| {
        let cfg = RouterConfig::new(6, 1).with_groups(groups, 1);
        let want =
            move |e: &SimbalError| *e == SimbalError::GroupsDoNotDivide { groups, experts: 6 };
        (format!("{groups} groups of 6"), cfg, want)
    });
    configs_refused(make, "router::errors::groups_do_not_divide", cases);
}

/// `TooManyGroups`: 512 groups of 512 experts.
pub fn too_many_groups<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let cfg = RouterConfig::new(512, 1).with_groups(512, 1);
    let want = |e: &SimbalError| match e {
        SimbalError::TooManyGroups { groups: 512, max } => *max < 512,
        _ => false,
    };
    configs_refused(
        make,
        "router::errors::too_many_groups",
        [("512 groups".into(), cfg, want)],
    );
}

/// `InvalidTopGroups`: `top_groups` 0 and more than the groups.
pub fn invalid_top_groups<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let cases = [0, 3].map(|top_groups| {
        let cfg = RouterConfig::new(4, 1).with_groups(2, top_groups);
        let want = move |e: &SimbalError| {
            *e == SimbalError::InvalidTopGroups {
                top_groups,
                groups: 2,
            }
        };
        (format!("top_groups = {top_groups} of 2"), cfg, want)
    });
    configs_refused(make, "router::errors::invalid_top_groups", cases);
}

/// `GroupSelectionTooSmall`: one group of 2 experts kept, `k = 3`.
pub fn group_selection_too_small<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let cfg = RouterConfig::new(8, 3).with_groups(4, 1);
    let want = |e: &SimbalError| *e == SimbalError::GroupSelectionTooSmall { k: 3, available: 2 };
    let cases = [("k = 3, 2 experts kept".into(), cfg, want)];
    configs_refused(make, "router::errors::group_selection_too_small", cases);
}

/// `InvalidCapacityFactor`: 0, negative, NaN, infinite.
pub fn invalid_capacity_factor<B: Backend>(make: &dyn Fn() -> Option<B>) {
    let cases = [0.0, -1.0, f64::NAN, f64::INFINITY].map(|cf| {
        let cfg = RouterConfig::new(4, 1).with_capacity(cf, DropPolicy::Probs);
        let want = move |e: &SimbalError| {
            matches!(e, SimbalError::InvalidCapacityFactor { value }
                if value.to_bits() == cf.to_bits())
        };
        (format!("cf = {cf}"), cfg, want)
    });
    configs_refused(make, "router::errors::invalid_capacity_factor", cases);
}

/// `InvalidCoefficient`: a gate scale that is NaN, or not finite in the element type.
pub fn invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::invalid_coefficient";
    start!(N, make);
    check(
        N,
        "scale NaN",
        new_router(make, RouterConfig::new(4, 1).with_scale(f64::NAN)),
        |e| matches!(e, SimbalError::InvalidCoefficient { what: "scale", .. }),
    );
    if !is_f64::<B::Elem>() {
        check(
            N,
            "scale 1e300 in f32",
            new_router(make, RouterConfig::new(4, 1).with_scale(1e300)),
            |e| matches!(e, SimbalError::InvalidCoefficient { what: "scale", .. }),
        );
    }
    let mut s = setup(make, RouterConfig::new(3, 1), 3, 2);
    check(
        N,
        "set_config scale inf",
        s.router
            .set_config(RouterConfig::new(3, 1).with_scale(f64::INFINITY)),
        |e| matches!(e, SimbalError::InvalidCoefficient { what: "scale", .. }),
    );
    s.still_works(N);
}

/// `NoForward`: the routing, a resumed pass, statistics and entropy before any forward; after a
/// forward that failed; a resumed token pass after a forward from logits (or of another
/// shape); and everything after `set_config`.
pub fn no_forward<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::no_forward";
    start!(N, make);
    let io = fresh(make);
    let x = up(&io, &[0.5; 6]).unwrap();
    let x4 = up(&io, &[0.5; 4]).unwrap();
    let r = up(&io, &[0.5; 6]).unwrap();
    let nan = up(&io, &[f64::NAN; 6]).unwrap();
    let mut router = Router::new(fresh(make), RouterConfig::new(3, 1)).unwrap();
    let (xv, rv) = (view::<B>(&x), view::<B>(&r));
    let nf = |e: &SimbalError| *e == SimbalError::NoForward;
    let asks = |router: &mut Router<B>, when: &str| {
        check(
            N,
            &format!("routing {when}"),
            router.routing().map(|_| ()),
            nf,
        );
        check(N, &format!("stats {when}"), router.stats().map(|_| ()), nf);
        check(
            N,
            &format!("load_metrics {when}"),
            router.load_metrics().map(|_| ()),
            nf,
        );
        check(
            N,
            &format!("routing_entropy {when}"),
            router.routing_entropy().map(|_| ()),
            nf,
        );
        check(
            N,
            &format!("resume {when}"),
            router.resume(xv, rv).map(|_| ()),
            nf,
        );
    };
    asks(&mut router, "before any forward");
    router.forward(xv, rv, None).unwrap();
    router.routing().expect("routing after a forward");
    check(
        N,
        "resume with tokens of another shape",
        router.resume(view::<B>(&x4), rv).map(|_| ()),
        nf,
    );
    // `check`: on a device the forward's checks wait for the pass's first read.
    let failed = router
        .forward(view::<B>(&nan), rv, None)
        .and_then(|mut p| p.check());
    assert!(failed.is_err());
    asks(&mut router, "after a failed forward");
    let z = up(&io, &[0.5; 9]).unwrap();
    router.forward_logits(view::<B>(&z), None).unwrap();
    router
        .routing()
        .expect("routing after a forward from logits");
    check(
        N,
        "resume a token pass after forward_logits",
        router.resume(xv, rv).map(|_| ()),
        nf,
    );
    router.forward(xv, rv, None).unwrap();
    router.set_config(RouterConfig::new(3, 1)).unwrap();
    asks(&mut router, "after set_config");
}

/// `Unsupported`: SimBal in the backward of a pass from logits.
pub fn unsupported<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::unsupported";
    start!(N, make);
    let b = fresh(make);
    let z = up(&b, &[0.5, 0.1, 0.2, 0.3]).unwrap();
    let dw = up(&b, &[1.0; 2]).unwrap();
    let mut router = Router::new(b, RouterConfig::new(2, 1)).unwrap();
    let mut pass = router.forward_logits(view::<B>(&z), None).unwrap();
    check(
        N,
        "SimBal on the logits path",
        pass.backward(view::<B>(&dw), &LossConfig::simbal(), None)
            .map(|_| ()),
        |e| matches!(e, SimbalError::Unsupported { .. }),
    );
    pass.backward(view::<B>(&dw), &LossConfig::switch(), None)
        .unwrap_or_else(|e| panic!("{N}: unusable after Unsupported: {e:?}"));
}
/// `Backend`: out-of-range expert indices refused by the precondition functions of
/// `dispatch` and `router_backward` (their index scan).
pub fn backend_error<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "router::errors::backend_error";
    let Some(b) = acquire(make, NAME) else { return };
    let cfg = RouterConfig::new(3, 1);
    let idx = [0u32, 3];
    let gates = [0.5, 0.5];
    match dispatch_run(&b, &cfg, 2, &idx, &gates) {
        Err(SimbalError::Backend { .. }) => {}
        other => panic!("{NAME}: dispatch with index 3 of 3 experts gave {other:?}"),
    }
    let x = BwdIn {
        n: 2,
        z: vec![0.0; 6],
        p: vec![1.0 / 3.0; 6],
        idx: idx.to_vec(),
        gates: gates.to_vec(),
        dropped: vec![0; 2],
        dw: vec![1.0; 2],
        lbl: None,
        ids: None,
        normalize: false,
        z_coef: 0.0,
    };
    match bwd_dz_run(&b, &cfg, &x) {
        Err(SimbalError::Backend { .. }) => {}
        other => panic!("{NAME}: router_backward with index 3 of 3 experts gave {other:?}"),
    }
}

/// The batch's token mask and sequence offsets: `InvalidMask` (an entry other than 0 or 1),
/// `LengthMismatch` (a mask without `N` entries), `InvalidOffsets` (not starting at 0, not
/// increasing, not ending at `N`), `Unsupported` (a packed layout without offsets);
/// `InvalidCoefficient` for a shard factor that is not finite and positive; a mask with no
/// valid token is no error: every token-averaged loss is 0 with zero gradient.
pub fn token_mask_and_offsets<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "router::errors::token_mask_and_offsets";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    let idx = |v: &[u32]| s.io.idx_upload(v).expect("upload");
    let (two, short) = (idx(&[1, 2, 1, 1]), idx(&[1, 1, 1]));
    let (bad_start, flat, short_end) = (idx(&[1, 4]), idx(&[0, 2, 2, 4]), idx(&[0, 3]));
    let (good, none) = (idx(&[0, 1, 4]), idx(&[0, 0, 0, 0]));
    let fwd = |s: &mut crate::harness::errors::Setup<B>, batch: Batch<'_, B>| {
        s.router
            .forward_batch(view::<B>(&s.x), view::<B>(&s.r), batch)
            .map(|_| ())
    };
    let mask = |m| Batch::new().mask(idx_view::<B>(m));
    let offsets = |o| Batch::new().offsets(idx_view::<B>(o));
    check(N, "mask entry 2", fwd(&mut s, mask(&two)), |e| {
        *e == SimbalError::InvalidMask { token: 1, value: 2 }
    });
    check(N, "mask of 3 for N = 4", fwd(&mut s, mask(&short)), |e| {
        matches!(
            e,
            SimbalError::LengthMismatch {
                what: "token mask",
                ..
            }
        )
    });
    for (what, o, pos) in [
        ("offsets from 1", &bad_start, 0),
        ("offsets not increasing", &flat, 2),
        ("offsets ending at 3 of 4", &short_end, 1),
    ] {
        check(
            N,
            what,
            fwd(&mut s, offsets(o)),
            |e| matches!(e, SimbalError::InvalidOffsets { position, tokens: 4, .. } if *position == pos),
        );
    }
    s.still_works(N);
    let packed = LossConfig::none().with_lbl(LblConfig {
        level: LblLevel::Sequence(SeqLayout::Packed),
        ..LblConfig::default()
    });
    check(
        N,
        "packed without offsets",
        s.backward(&packed, None),
        |e| matches!(e, SimbalError::Unsupported { .. }),
    );
    let bad_factor = LossConfig::none().with_lbl(LblConfig {
        shard_factor: 0.0,
        ..LblConfig::default()
    });
    check(N, "shard factor 0", s.backward(&bad_factor, None), |e| {
        matches!(
            e,
            SimbalError::InvalidCoefficient {
                what: "LBL shard factor",
                ..
            }
        )
    });
    // Packed offsets that fit: no error.
    let ok_packed = s
        .router
        .forward_batch(view::<B>(&s.x), view::<B>(&s.r), offsets(&good))
        .and_then(|mut p| {
            p.backward(view::<B>(&s.dw), &packed, None)
                .map(|g| g.losses.lbl)
        });
    assert!(
        ok_packed.is_ok(),
        "{N}: packed offsets that fit: {ok_packed:?}"
    );
    // No valid token: LBL and z-loss 0, aux gradient 0 (with a zero gate gradient).
    let zero_dw = s.up(&[0.0; 4]);
    let both = packed_free_losses();
    let mut pass = s
        .router
        .forward_batch(view::<B>(&s.x), view::<B>(&s.r), mask(&none))
        .expect("forward with every token masked");
    assert_eq!(pass.valid_tokens(), 0, "{N}: valid tokens");
    let g = pass
        .backward(view::<B>(&zero_dw), &both, None)
        .expect("backward with every token masked");
    let dz = down(&s.io, g.dz).expect("download");
    assert!(
        g.losses.lbl.to_f64_lossy() == 0.0
            && g.losses.z_loss.to_f64_lossy() == 0.0
            && dz.iter().all(|&v| v == 0.0),
        "{N}: every token masked: {:?}, dZ {dz:?}",
        g.losses
    );
}

/// Micro-batch LBL and z-loss.
fn packed_free_losses() -> LossConfig {
    LossConfig::none()
        .with_lbl(LblConfig::default())
        .with_z_loss(simbal_core::ZLossConfig::default())
}
