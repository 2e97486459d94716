//! The fused logits GEMM + forward rows (`E <= 8`) against the two launches it replaces (the
//! skinny GEMM, then the row kernel): the same logits bit for bit, and the same scores,
//! indices, gates and plain top-k as the row kernel gives for those logits.

mod common;
use common::*;
use simbal_cubecl::kernels::gemm::{gemm, gemm_path, GemmDims, GemmPath};
use simbal_cubecl::kernels::logits_route::{fuses, logits_route_rows, TokenLogits};
use simbal_cubecl::kernels::router_forward::{route_rows, RouteOptions, RowBufs};
use simbal_cubecl::kernels::DevBuf;

type Client = cubecl::prelude::ComputeClient<R>;

/// The five outputs of a forward: `z, p, gates` and `idx, plain`.
type Forward = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>, Vec<u32>);

struct Case<'a> {
    n: usize,
    d: usize,
    o: RouteOptions,
    x: &'a [f32],
    r: &'a [f32],
    trans_b: bool,
    bias: Option<&'a [f32]>,
}

impl Case<'_> {
    fn dims(&self) -> GemmDims {
        GemmDims {
            m: self.n,
            n: self.o.gating.e,
            k: self.d,
            trans_a: false,
            trans_b: self.trans_b,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Fused (one launch) or the skinny GEMM then the rows (two).
    fn run(&self, c: &Client, fused: bool) -> Forward {
        let (n, e, k) = (self.n, self.o.gating.e, self.o.gating.k);
        let (x, r) = (up(c, self.x), up(c, self.r));
        let bias = self.bias.map(|b| up(c, b));
        let z = DevBuf::<f32>::empty(c, n * e);
        let p = DevBuf::<f32>::empty(c, n * e);
        let idx = DevBuf::<u32>::empty(c, n * k);
        let gates = DevBuf::<f32>::empty(c, n * k);
        let plain = DevBuf::<u32>::empty(c, n * k);
        let rows = RowBufs {
            n,
            z: &z,
            p: &p,
            idx: &idx,
            gates: &gates,
        };
        if fused {
            let logits = TokenLogits {
                x: &x,
                r: &r,
                d: self.d,
                trans_b: self.trans_b,
            };
            logits_route_rows(c, &self.o, logits, rows, bias.as_ref(), Some(&plain)).unwrap();
        } else {
            assert_eq!(gemm_path(&self.dims()), GemmPath::Skinny);
            gemm(c, &self.dims(), &x, &r, &z).unwrap();
            route_rows(c, &self.o, rows, bias.as_ref(), Some(&plain)).unwrap();
        }
        let f = |b: &DevBuf<f32>| down(c, b);
        let u = |b: &DevBuf<u32>| down_u32(c, b);
        (f(&z), f(&p), f(&gates), u(&idx), u(&plain))
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fused_forward_equals_the_two_launches() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(21);
    let mut cases = 0;
    for &(n, d, e, k) in &[
        (64, 64, 8, 2),
        (70, 100, 8, 1),
        (129, 64, 4, 2),
        (200, 96, 1, 1),
        (96, 256, 6, 3),
    ] {
        let x = rng.vec(n * d);
        let r = rng.vec(d * e);
        let bias = rng.vec(e);
        for (softmax, renorm, trans_b, with_bias, groups) in [
            (true, true, false, false, None),
            (true, false, true, true, None),
            (false, true, false, true, None),
            (false, false, true, false, None),
            (true, true, false, true, Some((2, 1))),
        ] {
            let groups = groups.filter(|&(g, _)| e % g == 0 && e > 1);
            let o = RouteOptions {
                gating: gating(e, k, softmax, renorm, 1.5),
                groups,
            };
            let case = Case {
                n,
                d,
                o,
                x: &x,
                r: &r,
                trans_b,
                bias: with_bias.then_some(&bias[..]),
            };
            assert!(fuses(&case.dims()));
            let what = format!(
                "n={n} d={d} e={e} k={k} softmax={softmax} renorm={renorm} trans_b={trans_b} \
                 bias={with_bias} groups={groups:?}"
            );
            let (fz, fp, fg, fi, fpl) = case.run(&c, true);
            let (z, p, g, i, pl) = case.run(&c, false);
            assert_eq!(bits(&fz), bits(&z), "{what}: logits");
            assert_eq!(bits(&fp), bits(&p), "{what}: scores");
            assert_eq!(bits(&fg), bits(&g), "{what}: gates");
            assert_eq!(fi, i, "{what}: indices");
            assert_eq!(fpl, pl, "{what}: plain top-k");
            // And the logits are the product (to the SPEC's f32 tolerance).
            let mut want = vec![0.0f32; n * e];
            for t in 0..n {
                for j in 0..e {
                    want[t * e + j] = (0..d)
                        .map(|l| {
                            let rv = if trans_b { r[j * d + l] } else { r[l * e + j] };
                            x[t * d + l] * rv
                        })
                        .sum();
                }
            }
            close_scaled(&what, &fz, &want, 1e-4);
            cases += 1;
        }
    }
    assert_eq!(cases, 25);
}

#[test]
fn fused_forward_takes_only_the_skinny_shapes() {
    let Some(c) = client() else { return };
    let g = |m, n, k| GemmDims {
        m,
        n,
        k,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    assert!(fuses(&g(64, 8, 64)));
    assert!(!fuses(&g(64, 9, 64)), "E past the skinny kernel");
    assert!(!fuses(&g(63, 8, 64)), "few tokens");
    assert!(!fuses(&g(64, 8, 63)), "short D");
    assert!(!fuses(&GemmDims {
        alpha: 2.0,
        ..g(64, 8, 64)
    }));
    assert!(!fuses(&GemmDims {
        beta: 1.0,
        ..g(64, 8, 64)
    }));
    // The launcher refuses a wide router and wrong lengths with typed errors.
    let (n, d, e, k) = (64, 64, 16, 2);
    let o = RouteOptions {
        gating: gating(e, k, true, true, 1.0),
        groups: None,
    };
    let f = |len: usize| DevBuf::<f32>::empty(&c, len);
    let (x, r, z, p) = (f(n * d), f(d * e), f(n * e), f(n * e));
    let (idx, gates) = (DevBuf::<u32>::empty(&c, n * k), f(n * k));
    let rows = RowBufs {
        n,
        z: &z,
        p: &p,
        idx: &idx,
        gates: &gates,
    };
    let logits = TokenLogits {
        x: &x,
        r: &r,
        d,
        trans_b: false,
    };
    assert!(logits_route_rows(&c, &o, logits, rows, None, None).is_err());
    let o8 = RouteOptions {
        gating: gating(8, k, true, true, 1.0),
        groups: None,
    };
    let short_x = f(n * d - 1);
    let bad = TokenLogits {
        x: &short_x,
        ..logits
    };
    assert!(logits_route_rows(&c, &o8, bad, rows, None, None).is_err());
}
