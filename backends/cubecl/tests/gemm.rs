mod common;
use common::*;
use simbal_core::gemm::gemm_reference;
use simbal_core::Gemm;
use simbal_cubecl::kernels::gemm::{gemm, gemm_path, gemm_with, CubekStrategy, GemmDims, GemmPath};
use simbal_cubecl::KernelError;

/// Core's host reference on the same product.
fn reference(g: &GemmDims, a: &[f32], b: &[f32], c: &mut [f32]) {
    let mut h = Gemm::new(g.m, g.n, g.k)
        .alpha(f64::from(g.alpha))
        .beta(f64::from(g.beta));
    h.trans_a = g.trans_a;
    h.trans_b = g.trans_b;
    gemm_reference(&h, a, b, c);
}

/// Runs `g` on `path` (`None`: the dispatch of [`gemm`]) against the reference.
fn check_on(
    c: &cubecl::prelude::ComputeClient<R>,
    rng: &mut Rng,
    g: GemmDims,
    path: Option<GemmPath>,
) {
    let a = rng.vec(g.m * g.k);
    let b = rng.vec(g.k * g.n);
    let mut c0 = rng.vec(g.m * g.n);
    if g.beta == 0.0 && !c0.is_empty() {
        c0[0] = f32::NAN; // beta = 0 must ignore the old C, NaN included
    }
    let (da, db, dc) = (up(c, &a), up(c, &b), up(c, &c0));
    match path {
        None => gemm(c, &g, &da, &db, &dc).unwrap(),
        Some(p) => {
            gemm_with(c, &g, p, &da, &db, &dc).unwrap_or_else(|e| panic!("{p:?} on {g:?}: {e}"))
        }
    }
    let got = down(c, &dc);
    let mut want = c0.clone();
    reference(&g, &a, &b, &mut want);
    assert_close(
        &format!("{path:?} {g:?}"),
        &got,
        &want,
        1e-5 * (g.k as f32).sqrt().max(1.0),
    );
}

fn check(c: &cubecl::prelude::ComputeClient<R>, rng: &mut Rng, g: GemmDims) {
    check_on(c, rng, g, None);
}

/// Every transpose combination and alpha/beta case of `m x n x k` on `path`.
fn sweep(
    c: &cubecl::prelude::ComputeClient<R>,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    path: Option<GemmPath>,
) {
    for ta in [false, true] {
        for tb in [false, true] {
            if path == Some(GemmPath::Skinny) && ta && tb {
                continue; // the skinny kernels take at most one transpose
            }
            for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25), (3.0, 0.0)] {
                let g = GemmDims {
                    m,
                    n,
                    k,
                    trans_a: ta,
                    trans_b: tb,
                    alpha,
                    beta,
                };
                check_on(c, rng, g, path);
            }
        }
    }
}

/// Odd sizes (1, 7, 33, non-multiples of every tile), each forced on the own tiled kernel and
/// on both cubek routines; and the skinny kernels on every size they take.
#[test]
fn every_path_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(3);
    let sizes = [
        (1, 1, 1),
        (1, 7, 33),
        (7, 1, 5),
        (33, 33, 33),
        (7, 33, 1),
        (65, 47, 129),
        (130, 9, 300),
        (100, 40, 77),
    ];
    let paths = [
        GemmPath::Tiled,
        GemmPath::Cubek(CubekStrategy::SimpleUnit),
        GemmPath::Cubek(CubekStrategy::DoubleUnit),
    ];
    for &size in &sizes {
        for p in paths {
            sweep(&c, &mut rng, size, Some(p));
        }
    }
    for size in [
        (1, 1, 1),
        (7, 8, 33),
        (64, 1, 64),
        (257, 8, 1000),
        (33, 5, 70),
    ] {
        sweep(&c, &mut rng, size, Some(GemmPath::Skinny));
    }
}

/// The dispatch picks the documented path for the router's products (no timing involved).
#[test]
fn dispatch_paths() {
    let g = |m, n, k, trans_a, trans_b| GemmDims {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha: 1.0,
        beta: 0.0,
    };
    let su = GemmPath::Cubek(CubekStrategy::SimpleUnit);
    let du = GemmPath::Cubek(CubekStrategy::DoubleUnit);
    // E = 8 (N = D = 4096): Z = X R, dR = X^T dZ and the Gram R^T R skinny; dX = dZ R^T and
    // the SimBal gradient R G (k = E) cubek.
    assert_eq!(gemm_path(&g(4096, 8, 4096, false, false)), GemmPath::Skinny);
    assert_eq!(gemm_path(&g(4096, 8, 4096, true, false)), GemmPath::Skinny);
    assert_eq!(gemm_path(&g(8, 8, 4096, true, false)), GemmPath::Skinny);
    assert_eq!(gemm_path(&g(4096, 4096, 8, false, true)), su);
    assert_eq!(gemm_path(&g(4096, 8, 8, false, false)), su);
    // E = 32: the narrow long-k products on DoubleUnit, the rest on SimpleUnit.
    assert_eq!(gemm_path(&g(4096, 32, 768, false, false)), du);
    assert_eq!(gemm_path(&g(768, 32, 4096, true, false)), du);
    assert_eq!(gemm_path(&g(32, 32, 768, true, false)), du);
    assert_eq!(gemm_path(&g(4096, 768, 32, false, true)), su);
    assert_eq!(gemm_path(&g(768, 32, 32, false, false)), su);
    // E = 256: SimpleUnit for all five.
    assert_eq!(gemm_path(&g(2048, 256, 7168, false, false)), su);
    assert_eq!(gemm_path(&g(7168, 256, 2048, true, false)), su);
    assert_eq!(gemm_path(&g(2048, 7168, 256, false, true)), su);
    assert_eq!(gemm_path(&g(256, 256, 7168, true, false)), su);
    assert_eq!(gemm_path(&g(7168, 256, 256, false, false)), su);
    // Small products and skinny shapes the skinny kernels would run slowly: cubek.
    assert_eq!(gemm_path(&g(7, 33, 1, false, false)), su);
    assert_eq!(gemm_path(&g(8, 8, 4096, false, false)), du);
    assert_eq!(gemm_path(&g(4096, 8, 4096, true, true)), du);
}

/// The tensor-core routine (tf32 on CUDA) is opt-in: where the device has no tensor cores (as
/// lavapipe) cubek refuses it at setup, as an error and not a panic, and leaves `C` untouched.
#[test]
fn accelerated_refused_without_tensor_cores() {
    let Some(c) = client() else { return };
    let g = GemmDims {
        m: 64,
        n: 64,
        k: 64,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let (a, b, d) = (
        up(&c, &[1.0; 4096]),
        up(&c, &[1.0; 4096]),
        up(&c, &[0.0; 4096]),
    );
    let has_cmma = !c.properties().features.matmul.cmma.is_empty();
    match gemm_with(
        &c,
        &g,
        GemmPath::Cubek(CubekStrategy::Accelerated),
        &a,
        &b,
        &d,
    ) {
        Err(KernelError::Unsupported(_)) => assert!(down(&c, &d).iter().all(|&v| v == 0.0)),
        Err(e) => panic!("unexpected error {e}"),
        Ok(()) => assert!(has_cmma, "ran without tensor cores"),
    }
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
    // Small output, long K: the own tiled kernel's split-K path (forced: the dispatch sends
    // these to cubek), and the dispatch.
    for path in [Some(GemmPath::Tiled), None] {
        for ta in [false, true] {
            for tb in [false, true] {
                for (m, n, k, alpha, beta) in [(48, 8, 2000, 1.0, 0.0), (70, 20, 1111, 0.3, 1.0)] {
                    let g = GemmDims {
                        m,
                        n,
                        k,
                        trans_a: ta,
                        trans_b: tb,
                        alpha,
                        beta,
                    };
                    check_on(&c, &mut rng, g, path);
                }
            }
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
