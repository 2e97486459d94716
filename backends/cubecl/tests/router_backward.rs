mod common;
use common::*;
use simbal_cubecl::kernels::router_backward::{
    router_backward_rows, BackLbl, BackOptions, BackOutputs, TokenGroups,
};
use simbal_cubecl::kernels::router_forward::{RouteOptions, RowBufs};
use simbal_cubecl::kernels::{reduce, DevBuf};

#[test]
fn backward_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(11);
    for &(n, e, k) in &[
        (1, 1, 1),
        (37, 8, 2),
        (64, 32, 4),
        (20, 100, 7),
        (16, 256, 8),
    ] {
        for softmax in [true, false] {
            for renorm in [true, false] {
                for (with_lbl, z_coef) in [(false, 0.0f32), (true, 0.0), (true, 0.01), (false, 0.5)]
                {
                    let o = BackOptions {
                        gating: gating(e, k, softmax, renorm, 1.3),
                        z_coef,
                    };
                    let z = rng.vec(n * e);
                    let forward = RouteOptions {
                        gating: o.gating,
                        groups: None,
                    };
                    let (p, idx, mut gates) = route_reference(n, &forward, &z, None);
                    let dropped: Vec<u32> =
                        (0..n * k).map(|_| (rng.below(4) == 0) as u32).collect();
                    for (g, &d) in gates.iter_mut().zip(&dropped) {
                        if d != 0 {
                            *g = 0.0;
                        }
                    }
                    let dw = rng.vec(n * k);
                    let seq = if n % 4 == 0 { n / 4 } else { n };
                    let coef = rng.vec((n / seq) * e);
                    let lbl = with_lbl.then_some((&coef[..], seq));
                    let want = backward_reference(n, &o, &z, &p, &idx, &gates, &dropped, &dw, lbl);
                    let dcoef = up(&c, &coef);
                    let dz = DevBuf::<f32>::empty(&c, n * e);
                    let lse_rows = DevBuf::<f32>::empty(&c, n);
                    let dz_max = reduce::abs_max_cell(&c);
                    // Each row's lse(z)^2, as the z-loss sums it.
                    let want_lse: Vec<f32> = z
                        .chunks_exact(e)
                        .map(|row| {
                            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                            let l = m + row.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
                            l * l
                        })
                        .collect();
                    let (z, p) = (&up(&c, &z), &up(&c, &p));
                    let (idx, gates) = (&up_u32(&c, &idx), &up(&c, &gates));
                    router_backward_rows(
                        &c,
                        &o,
                        RowBufs {
                            n,
                            z,
                            p,
                            idx,
                            gates,
                        },
                        &up_u32(&c, &dropped),
                        &up(&c, &dw),
                        TokenGroups::Runs(if with_lbl { seq } else { n }),
                        with_lbl.then_some(BackLbl {
                            coef: &dcoef,
                            normalize: false,
                        }),
                        BackOutputs {
                            dz: &dz,
                            lse_rows: Some(&lse_rows),
                            max_abs: Some(&dz_max),
                        },
                    )
                    .unwrap();
                    let what = format!("n={n} e={e} k={k} softmax={softmax} renorm={renorm} lbl={with_lbl} z={z_coef}");
                    let got = down(&c, &dz);
                    assert_close(&what, &got, &want, 2e-5);
                    assert_close(&what, &down(&c, &lse_rows), &want_lse, 2e-5);
                    // The fused `max |dZ|` is exactly the maximum of what the rows wrote.
                    let max = got.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let fused = down(&c, &dz_max.bits_as_f32())[0];
                    assert_eq!(fused.to_bits(), max.to_bits(), "{what}: max |dZ|");
                }
            }
        }
    }
}

#[test]
fn backward_rejects_bad_lengths() {
    let Some(c) = client() else { return };
    let o = BackOptions {
        gating: gating(4, 2, true, true, 1.0),
        z_coef: 0.0,
    };
    let f = |len: usize| DevBuf::<f32>::empty(&c, len);
    let u = |len: usize| DevBuf::<u32>::empty(&c, len);
    // n = 3 with a sequence length of 2 does not divide.
    let (z, p12, p11, idx, gates) = (&f(12), &f(12), &f(11), &u(6), &f(6));
    let rows = |p| RowBufs {
        n: 3,
        z,
        p,
        idx,
        gates,
    };
    let coef = f(4);
    let lbl = || {
        Some(BackLbl {
            coef: &coef,
            normalize: false,
        })
    };
    let runs = TokenGroups::Runs(2);
    let dz = f(12);
    let only_dz = BackOutputs {
        dz: &dz,
        lse_rows: None,
        max_abs: None,
    };
    let r = router_backward_rows(&c, &o, rows(p12), &u(6), &f(6), runs, lbl(), only_dz);
    assert!(r.is_err());
    let r = router_backward_rows(&c, &o, rows(p11), &u(6), &f(6), runs, None, only_dz);
    assert!(r.is_err());
    let lse = f(5); // not one per row
    let out = BackOutputs {
        lse_rows: Some(&lse),
        ..only_dz
    };
    let r = router_backward_rows(&c, &o, rows(p12), &u(6), &f(6), runs, None, out);
    assert!(r.is_err());
    let cell = u(2); // not one element
    let out = BackOutputs {
        max_abs: Some(&cell),
        ..only_dz
    };
    let r = router_backward_rows(&c, &o, rows(p12), &u(6), &f(6), runs, None, out);
    assert!(r.is_err());
}

/// A NaN in the gate gradient reaches `dZ`, and the fused `max |dZ|` says NaN.
#[test]
fn fused_max_abs_keeps_a_nan() {
    let Some(c) = client() else { return };
    let (n, e, k) = (40, 16, 2);
    let o = BackOptions {
        gating: gating(e, k, true, false, 1.0),
        z_coef: 0.0,
    };
    let mut rng = Rng::new(5);
    let z = rng.vec(n * e);
    let forward = RouteOptions {
        gating: o.gating,
        groups: None,
    };
    let (p, idx, gates) = route_reference(n, &forward, &z, None);
    let mut dw = rng.vec(n * k);
    for poison in [false, true] {
        if poison {
            dw[37 * k + 1] = f32::NAN;
        }
        let dz = DevBuf::<f32>::empty(&c, n * e);
        let cell = reduce::abs_max_cell(&c);
        let (z, p) = (&up(&c, &z), &up(&c, &p));
        let (idx, gates) = (&up_u32(&c, &idx), &up(&c, &gates));
        router_backward_rows(
            &c,
            &o,
            RowBufs {
                n,
                z,
                p,
                idx,
                gates,
            },
            &up_u32(&c, &vec![0; n * k]),
            &up(&c, &dw),
            TokenGroups::Runs(n),
            None,
            BackOutputs {
                dz: &dz,
                lse_rows: None,
                max_abs: Some(&cell),
            },
        )
        .unwrap();
        let max = down(&c, &cell.bits_as_f32())[0];
        assert_eq!(max.is_nan(), poison, "{max}");
        assert!(poison || max > 0.0);
    }
}
