mod common;
use common::*;
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject};
use simbal_core::WeightLayout;
use simbal_cubecl::kernels::gemm::{gemm, GemmDims};
use simbal_cubecl::kernels::simbal::{
    normalize_columns, ortho_error, scale_free_project, simbal_residual, Norm,
};
use simbal_cubecl::kernels::DevBuf;

/// `(loss, dR)` straight from the formulas, `R` stored `D x E`.
fn reference(norm: Norm, lambda: f32, d: usize, e: usize, r: &[f32]) -> (f32, Vec<f32>) {
    let mut rn = r.to_vec();
    let mut norms = vec![1.0f32; e];
    if norm == Norm::ScaleFree {
        for c in 0..e {
            norms[c] = (0..d)
                .map(|i| r[i * e + c] * r[i * e + c])
                .sum::<f32>()
                .sqrt();
            for i in 0..d {
                rn[i * e + c] = if norms[c] > 0.0 {
                    r[i * e + c] / norms[c]
                } else {
                    0.0
                };
            }
        }
    }
    let ee = (e * e) as f32;
    let mut g = vec![0.0f32; e * e];
    let mut loss = 0.0;
    for a in 0..e {
        for b in 0..e {
            let s: f32 = (0..d).map(|i| rn[i * e + a] * rn[i * e + b]).sum();
            let v = if a == b { s - 1.0 } else { s };
            g[a * e + b] = v;
            loss += if norm == Norm::L1 { v.abs() } else { v * v };
        }
    }
    let loss = if norm == Norm::ScaleFree {
        lambda * loss / ee
    } else {
        lambda * loss
    };
    let m = |v: f32| match norm {
        Norm::L1 => {
            2.0 * lambda
                * if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
        }
        Norm::FrobeniusSq => 4.0 * lambda * v,
        Norm::ScaleFree => 4.0 * lambda * v / ee,
    };
    let mut dn = vec![0.0f32; d * e];
    for i in 0..d {
        for a in 0..e {
            dn[i * e + a] = (0..e).map(|b| rn[i * e + b] * m(g[b * e + a])).sum();
        }
    }
    if norm != Norm::ScaleFree {
        return (loss, dn);
    }
    let mut out = vec![0.0f32; d * e];
    for c in 0..e {
        let dot: f32 = (0..d).map(|i| rn[i * e + c] * dn[i * e + c]).sum();
        for i in 0..d {
            out[i * e + c] = if norms[c] > 0.0 {
                (dn[i * e + c] - rn[i * e + c] * dot) / norms[c]
            } else {
                0.0
            };
        }
    }
    (loss, out)
}

fn transpose(d: usize, e: usize, r: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; d * e];
    for i in 0..d {
        for c in 0..e {
            t[c * d + i] = r[i * e + c];
        }
    }
    t
}

/// The device pipeline the backend runs: (normalise,) Gram GEMM, residual, gradient GEMM
/// (, projection). `dxe` picks the storage layout of `R`.
fn device(
    c: &cubecl::prelude::ComputeClient<R>,
    norm: Norm,
    lambda: f32,
    d: usize,
    e: usize,
    r: &[f32],
    dxe: bool,
) -> (f32, Vec<f32>) {
    let stored = if dxe { r.to_vec() } else { transpose(d, e, r) };
    let dr = up(c, &stored);
    let layout = if dxe {
        WeightLayout::DxE
    } else {
        WeightLayout::ExD
    };
    let mut norms = DevBuf::<f32>::empty(c, e);
    let mut rn = DevBuf::<f32>::empty(c, d * e);
    let w = if norm == Norm::ScaleFree {
        let a = NormalizeColumns {
            layout,
            d,
            e,
            r: &dr,
            norms: &mut norms,
            rn: &mut rn,
        };
        normalize_columns(c, &a).unwrap();
        &rn
    } else {
        &dr
    };
    // G = W^T W: DxE storage -> A^T A; ExD storage -> A A^T.
    let gram = DevBuf::<f32>::empty(c, e * e);
    let gg = GemmDims {
        m: e,
        n: e,
        k: d,
        trans_a: true,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let gg = if dxe {
        gg
    } else {
        GemmDims {
            trans_a: false,
            trans_b: true,
            ..gg
        }
    };
    gemm(c, &gg, w, w, &gram).unwrap();
    let loss = DevBuf::<f32>::empty(c, 1);
    simbal_residual(c, norm, lambda, e, &gram, &loss, 0).unwrap();
    // dW = W M (DxE) or M^T W = M W (ExD, M symmetric).
    let dn = DevBuf::<f32>::empty(c, d * e);
    let g2 = if dxe {
        GemmDims {
            m: d,
            n: e,
            k: e,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    } else {
        GemmDims {
            m: e,
            n: d,
            k: e,
            trans_a: true,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    };
    if dxe {
        gemm(c, &g2, w, &gram, &dn).unwrap();
    } else {
        gemm(c, &g2, &gram, w, &dn).unwrap();
    }
    let grad = if norm == Norm::ScaleFree {
        let mut grad = up(c, &vec![0.0; d * e]);
        let (rn, norms, g) = (&rn, &norms, &dn);
        let a = ScaleFreeProject {
            layout,
            d,
            e,
            rn,
            norms,
            g,
            grad: &mut grad,
        };
        scale_free_project(c, &a).unwrap();
        grad
    } else {
        dn
    };
    let got = down(c, &grad);
    (
        down(c, &loss)[0],
        if dxe { got } else { transpose(e, d, &got) },
    )
}

#[test]
fn simbal_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(31);
    for &(d, e) in &[(1, 1), (40, 12), (100, 33), (16, 64)] {
        for norm in [Norm::L1, Norm::FrobeniusSq, Norm::ScaleFree] {
            for dxe in [true, false] {
                let r: Vec<f32> = rng.vec(d * e).iter().map(|v| v * 0.3).collect();
                let (wl, wg) = reference(norm, 0.1, d, e, &r);
                let (gl, gg) = device(&c, norm, 0.1, d, e, &r, dxe);
                let what = format!("d={d} e={e} {norm:?} dxe={dxe}");
                assert!(
                    (gl - wl).abs() <= 1e-4 * wl.abs().max(1.0),
                    "{what}: loss {gl} vs {wl}"
                );
                assert_close(&what, &gg, &wg, 1e-4);
            }
        }
    }
}

#[test]
fn sign_of_zero_is_zero() {
    let Some(c) = client() else { return };
    // Exact Gram matrix with zeros off the diagonal and ones on it: G = 0, so M = 0 and loss 0.
    let e = 5;
    let mut gram = vec![0.0f32; e * e];
    for a in 0..e {
        gram[a * e + a] = 1.0;
    }
    let dg = up(&c, &gram);
    let loss = DevBuf::<f32>::empty(&c, 1);
    simbal_residual(&c, Norm::L1, 0.1, e, &dg, &loss, 0).unwrap();
    assert_eq!(down(&c, &loss), vec![0.0]);
    assert!(down(&c, &dg).iter().all(|&v| v == 0.0));
}

#[test]
fn orthogonality_error() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(32);
    let e = 70;
    let gram = rng.vec(e * e);
    let out = DevBuf::<f32>::empty(&c, 2);
    ortho_error(&c, e, &up(&c, &gram), &out).unwrap();
    let g: Vec<f32> = (0..e * e)
        .map(|i| {
            if i / e == i % e {
                gram[i] - 1.0
            } else {
                gram[i]
            }
        })
        .collect();
    let mean = g.iter().map(|v| v * v).sum::<f32>() / (e * e) as f32;
    let max = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close("ortho", &down(&c, &out), &[mean, max], 1e-5);
}
