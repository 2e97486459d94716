//! SimBal's kernels on their own (see [`crate::harness::kernel`]): `simbal_residual`,
//! `normalize_columns` and `scale_free_project`.

use super::bufs::Bufs;
use crate::harness::gen;
use crate::harness::kernel::{call, kernel_check, three, Zeros, R};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{Backend, Rng, Scalar, SimBalConfig, WeightLayout};

fn residual_run<C: Backend>(c: &C, cfg: &SimBalConfig, e: usize, g: &[f64]) -> R<(f64, Vec<f64>)> {
    let mut b = Bufs::new(1, e, &Zeros(c))?;
    b.gram = up(c, g)?;
    let loss = c
        .read_value(&call!(c, simbal_residual(b.residual(cfg)))?)?
        .to_f64_lossy();
    Ok((loss, down(c, &b.gram)?))
}

/// `simbal_residual` for every norm on a symmetric Gram matrix.
pub fn residual<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::kernels::residual";
    let strategy = (1..=8usize, gen::simbal_config(), any::<u64>());
    kernel_check(make, NAME, strategy, |b, tol, (e, cfg, seed)| {
        let mut rng = Rng::new(seed);
        let mut g = vec![0.0; e * e];
        for a in 0..e {
            for c in a..e {
                let v = if a == c {
                    1.0 + 0.3 * rng.normal()
                } else {
                    0.3 * rng.normal()
                };
                g[a * e + c] = v;
                g[c * e + a] = v;
            }
        }
        let g = rounded::<B::Elem>(&g);
        if g.iter().enumerate().any(|(ab, v)| {
            let r = if ab / e == ab % e { v - 1.0 } else { *v };
            r.abs() < 1e-6
        }) {
            return Err(reject("residual near 0"));
        }
        let (got, want, want64) = three!(b, residual_run(&cfg, e, &g));
        vs_refs(&want, &want64, |tag, w| {
            close1(&format!("simbal_residual loss vs {tag}"), got.0, w.0, tol)?;
            close(
                &format!("simbal_residual multiplier vs {tag}"),
                &got.1,
                &w.1,
                tol,
            )
        })
    });
}

fn norm_run<C: Backend>(
    c: &C,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[f64],
) -> R<(Vec<f64>, Vec<f64>)> {
    let mut b = Bufs::new(d, e, &Zeros(c))?;
    b.r = up(c, r)?;
    call!(c, normalize_columns(b.normalize(layout)))?;
    Ok((down(c, &b.norms)?, down(c, &b.rn)?))
}

fn project_run<C: Backend>(
    c: &C,
    layout: WeightLayout,
    (d, e): (usize, usize),
    rn: &[f64],
    norms: &[f64],
    g: &[f64],
    grad: &[f64],
) -> R<Vec<f64>> {
    let mut b = Bufs::new(d, e, &Zeros(c))?;
    (b.rn, b.norms, b.g, b.grad) = (up(c, rn)?, up(c, norms)?, up(c, g)?, up(c, grad)?);
    call!(c, scale_free_project(b.project(layout)))?;
    down(c, &b.grad)
}

/// `normalize_columns` (a zero column included sometimes) and `scale_free_project` (accumulating
/// into a non-zero gradient), both layouts.
pub fn column_normalisation<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::kernels::column_normalisation";
    let strategy = (
        gen::weight_shape(),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        any::<bool>(),
    );
    kernel_check(make, NAME, strategy, |b, tol, case| {
        let ((d, e, seed), layout, zero_col) = case;
        let mut rng = Rng::new(seed);
        let mut r = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        if zero_col {
            let (rs, cs) = simbal_core::simbal::reference::strides(layout, d, e);
            let c = rng.below(e);
            for i in 0..d {
                r[i * rs + c * cs] = 0.0;
            }
        }
        let (got, want, want64) = three!(b, norm_run(layout, d, e, &r));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("column norms vs {tag}"), &got.0, &w.0, tol)?;
            close(&format!("normalised columns vs {tag}"), &got.1, &w.1, tol)
        })?;
        // Project a gradient through the reference's normalisation.
        let (norms, rn) = (rounded::<B::Elem>(&want64.0), rounded::<B::Elem>(&want64.1));
        let g = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let grad = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let (got, want, want64) = three!(b, project_run(layout, (d, e), &rn, &norms, &g, &grad));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("scale_free_project vs {tag}"), &got, w, tol)
        })
    });
}
