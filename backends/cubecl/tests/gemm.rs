mod common;
use common::*;
use simbal_cubecl::kernels::gemm::{gemm, GemmDims};

fn reference(g: &GemmDims, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = 0.0f32;
            for l in 0..g.k {
                let av = if g.trans_a {
                    a[l * g.m + i]
                } else {
                    a[i * g.k + l]
                };
                let bv = if g.trans_b {
                    b[j * g.k + l]
                } else {
                    b[l * g.n + j]
                };
                s += av * bv;
            }
            let o = &mut c[i * g.n + j];
            *o = if g.beta == 0.0 {
                g.alpha * s
            } else {
                g.alpha * s + g.beta * *o
            };
        }
    }
}

fn check(c: &cubecl::prelude::ComputeClient<R>, rng: &mut Rng, g: GemmDims) {
    let a = rng.vec(g.m * g.k);
    let b = rng.vec(g.k * g.n);
    let mut c0 = rng.vec(g.m * g.n);
    if g.beta == 0.0 && !c0.is_empty() {
        c0[0] = f32::NAN; // beta = 0 must ignore the old C, NaN included
    }
    let (da, db, dc) = (up(c, &a), up(c, &b), up(c, &c0));
    gemm(c, &g, &da, &db, &dc).unwrap();
    let got = down(c, &dc);
    let mut want = c0.clone();
    reference(&g, &a, &b, &mut want);
    assert_close(
        &format!("{g:?}"),
        &got,
        &want,
        1e-5 * (g.k as f32).sqrt().max(1.0),
    );
}

#[test]
fn gemm_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[
        (1, 1, 1),
        (3, 5, 7),
        (64, 64, 16),
        (65, 33, 17),
        (100, 8, 300),
        (17, 129, 64),
        (4, 6, 0),
        // Skinny outputs (n <= 8, m and k >= 64): the skinny kernels, with and without a
        // split over the inner dimension; n = 9 just past them.
        (64, 1, 64),
        (257, 8, 1000),
        (1030, 5, 4100),
        (70, 8, 2000),
        (130, 9, 300),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                    check(
                        &c,
                        &mut rng,
                        GemmDims {
                            m,
                            n,
                            k,
                            trans_a: ta,
                            trans_b: tb,
                            alpha,
                            beta,
                        },
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_split_k_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(2);
    // Small output, long K: the split-K path.
    for ta in [false, true] {
        for tb in [false, true] {
            check(
                &c,
                &mut rng,
                GemmDims {
                    m: 48,
                    n: 8,
                    k: 2000,
                    trans_a: ta,
                    trans_b: tb,
                    alpha: 1.0,
                    beta: 0.0,
                },
            );
            check(
                &c,
                &mut rng,
                GemmDims {
                    m: 70,
                    n: 20,
                    k: 1111,
                    trans_a: ta,
                    trans_b: tb,
                    alpha: 0.3,
                    beta: 1.0,
                },
            );
        }
    }
}

#[test]
fn gemm_rejects_bad_lengths() {
    let Some(c) = client() else { return };
    let g = GemmDims {
        m: 2,
        n: 2,
        k: 2,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let a = up(&c, &[0.0; 3]);
    let b = up(&c, &[0.0; 4]);
    let d = up(&c, &[0.0; 4]);
    assert!(gemm(&c, &g, &a, &b, &d).is_err());
}
