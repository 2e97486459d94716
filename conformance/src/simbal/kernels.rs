//! SimBal's kernels on their own (see [`crate::harness::kernel`]): `simbal_residual`,
//! `normalize_columns` and `scale_free_project`.

use crate::harness::gen;
use crate::harness::kernel::{three, CASES, R};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::memory::{view, view_mut};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};
use simbal_core::{Backend, Rng, Scalar, SimBalConfig, WeightLayout};

fn residual_run<C: Backend>(c: &C, cfg: &SimBalConfig, e: usize, g: &[f64]) -> R<(f64, Vec<f64>)> {
    let mut gb = up(c, g)?;
    let a = SimbalResidual {
        cfg,
        e,
        gram: view_mut::<C>(&mut gb),
    };
    let loss = c.simbal_residual(a.check(c)?)?.to_f64_lossy();
    Ok((loss, down(c, &gb)?))
}

/// `simbal_residual` for every norm on a symmetric Gram matrix.
pub fn residual<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::kernels::residual";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (1..=8usize, gen::simbal_config(), any::<u64>());
    run_prop(NAME, CASES, strategy, |(e, cfg, seed)| {
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
        let (got, want, want64) = three!(&b, residual_run(&cfg, e, &g));
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
    let rb = up(c, r)?;
    let mut norms = c.zeros(e)?;
    let mut rn = c.zeros(d * e)?;
    c.normalize_columns(
        NormalizeColumns {
            layout,
            d,
            e,
            r: view::<C>(&rb),
            norms: view_mut::<C>(&mut norms),
            rn: view_mut::<C>(&mut rn),
        }
        .check(c)?,
    )?;
    Ok((down(c, &norms)?, down(c, &rn)?))
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
    let (rb, nb, gb) = (up(c, rn)?, up(c, norms)?, up(c, g)?);
    let mut out = up(c, grad)?;
    c.scale_free_project(
        ScaleFreeProject {
            layout,
            d,
            e,
            rn: view::<C>(&rb),
            norms: view::<C>(&nb),
            g: view::<C>(&gb),
            grad: view_mut::<C>(&mut out),
        }
        .check(c)?,
    )?;
    down(c, &out)
}

/// `normalize_columns` (a zero column included sometimes) and `scale_free_project` (accumulating
/// into a non-zero gradient), both layouts.
pub fn column_normalisation<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "simbal::kernels::column_normalisation";
    let Some(b) = acquire(make, NAME) else { return };
    let tol = B::Elem::CONFORMANCE_TOL;
    let strategy = (
        gen::weight_shape(),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        any::<bool>(),
    );
    run_prop(NAME, CASES, strategy, |((d, e, seed), layout, zero_col)| {
        let mut rng = Rng::new(seed);
        let mut r = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        if zero_col {
            let (rs, cs) = simbal_core::simbal::reference::strides(layout, d, e);
            let c = rng.below(e);
            for i in 0..d {
                r[i * rs + c * cs] = 0.0;
            }
        }
        let (got, want, want64) = three!(&b, norm_run(layout, d, e, &r));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("column norms vs {tag}"), &got.0, &w.0, tol)?;
            close(&format!("normalised columns vs {tag}"), &got.1, &w.1, tol)
        })?;
        // Project a gradient through the reference's normalisation.
        let (norms, rn) = (rounded::<B::Elem>(&want64.0), rounded::<B::Elem>(&want64.1));
        let g = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let grad = rounded::<B::Elem>(&gen::normal(&mut rng, d * e, 1.0));
        let (got, want, want64) = three!(&b, project_run(layout, (d, e), &rn, &norms, &g, &grad));
        vs_refs(&want, &want64, |tag, w| {
            close(&format!("scale_free_project vs {tag}"), &got, w, tol)
        })
    });
}
