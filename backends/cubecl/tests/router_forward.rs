mod common;
use common::*;
use simbal_cubecl::kernels::router_forward::{route_rows, RouteOptions, RowBufs};
use simbal_cubecl::kernels::DevBuf;

/// Options of `E` experts, `k` a token, without a group limit.
fn options(e: usize, k: usize, softmax: bool, renorm: bool, scale: f32) -> RouteOptions {
    RouteOptions {
        gating: gating(e, k, softmax, renorm, scale),
        groups: None,
    }
}

/// The device's `(p, idx, gates)` of `n` rows routed under `o`.
fn device(
    c: &cubecl::prelude::ComputeClient<R>,
    n: usize,
    o: &RouteOptions,
    z: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let (e, k) = (o.gating.e, o.gating.k);
    let dz = up(c, z);
    let db = bias.map(|b| up(c, b));
    let p = DevBuf::<f32>::empty(c, n * e);
    let idx = DevBuf::<u32>::empty(c, n * k);
    let g = DevBuf::<f32>::empty(c, n * k);
    let rows = RowBufs {
        n,
        z: &dz,
        p: &p,
        idx: &idx,
        gates: &g,
    };
    route_rows(c, o, rows, db.as_ref(), None).unwrap();
    (down(c, &p), down_u32(c, &idx), down(c, &g))
}

/// Routes `n` rows on the device and on the host (gate scale 1.5, `groups` limit); all agree.
#[allow(clippy::too_many_arguments)]
fn run(
    c: &cubecl::prelude::ComputeClient<R>,
    n: usize,
    e: usize,
    k: usize,
    softmax: bool,
    renorm: bool,
    groups: Option<(usize, usize)>,
    z: &[f32],
    bias: Option<&[f32]>,
) {
    let o = RouteOptions {
        groups,
        ..options(e, k, softmax, renorm, 1.5)
    };
    let (p, idx, g) = device(c, n, &o, z, bias);
    let (wp, wi, wg) = route_reference(n, &o, z, bias);
    let what = format!(
        "n={n} e={e} k={k} softmax={softmax} renorm={renorm} groups={groups:?} bias={}",
        bias.is_some()
    );
    assert_eq!(idx, wi, "indices: {what}");
    assert_close(&format!("scores {what}"), &p, &wp, 1e-5);
    assert_close(&format!("gates {what}"), &g, &wg, 1e-5);
}

#[test]
fn forward_matches_reference_with_ties() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(7);
    for &(e, k) in &[(1, 1), (5, 2), (8, 2), (32, 4), (64, 6), (100, 7), (256, 8)] {
        for &n in &[1usize, 37] {
            for softmax in [true, false] {
                for renorm in [true, false] {
                    let z = grid_logits(&mut rng, n * e, 9, 0.5);
                    run(&c, n, e, k, softmax, renorm, None, &z, None);
                    let b = grid_logits(&mut rng, e, 3, 0.25);
                    run(&c, n, e, k, softmax, renorm, None, &z, Some(&b));
                }
            }
        }
    }
}

#[test]
fn forward_group_limited() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(8);
    for &(e, k, g, top) in &[
        (256, 8, 8, 4),
        (64, 6, 8, 3),
        (32, 5, 4, 2),
        (16, 2, 4, 4),
        (12, 1, 3, 1),
        (24, 8, 4, 2),
    ] {
        for softmax in [true, false] {
            let n = 50;
            let z = grid_logits(&mut rng, n * e, 7, 0.5);
            run(&c, n, e, k, softmax, true, Some((g, top)), &z, None);
            let b = grid_logits(&mut rng, e, 3, 0.25);
            run(&c, n, e, k, softmax, false, Some((g, top)), &z, Some(&b));
        }
    }
}

#[test]
fn forward_random_and_huge_logits() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(9);
    let (n, e, k) = (300, 32, 4);
    let z = rng.vec(n * e);
    run(&c, n, e, k, true, true, None, &z, None);
    // Magnitude 1e30: scores and gates stay finite.
    let z: Vec<f32> = (0..n * e)
        .map(|i| if i % 3 == 0 { 1e30 } else { -1e30 * rng.unif() })
        .collect();
    for softmax in [true, false] {
        let (p, _, g) = device(&c, n, &options(e, k, softmax, true, 1.0), &z, None);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!(g.iter().all(|v| v.is_finite()));
        run(&c, n, e, k, softmax, true, None, &z, None);
    }
}

#[test]
fn forward_rejects_bad_config() {
    let Some(c) = client() else { return };
    let z = up(&c, &[0.0; 8]);
    let p = DevBuf::<f32>::empty(&c, 8);
    let idx = DevBuf::<u32>::empty(&c, 2);
    let g = DevBuf::<f32>::empty(&c, 2);
    let opts = |k, groups| RouteOptions {
        groups,
        ..options(4, k, true, true, 1.0)
    };
    let rows = |n| RowBufs {
        n,
        z: &z,
        p: &p,
        idx: &idx,
        gates: &g,
    };
    // k > E; groups that do not divide E; logits of 2 rows routed as 3.
    assert!(route_rows(&c, &opts(5, None), rows(2), None, None).is_err());
    assert!(route_rows(&c, &opts(1, Some((3, 1))), rows(2), None, None).is_err());
    assert!(route_rows(&c, &opts(1, None), rows(3), None, None).is_err());
}
