//! SimBal, the similarity-preserving router loss (arXiv 2506.14038), and its variants.
//!
//! `G = R^T R - I`. L1: `L = lambda sum |G|`, `dR = 2 lambda R sign(G)`. FrobeniusSq:
//! `L = lambda sum G^2`, `dR = 4 lambda R G`. ScaleFree: columns normalised first,
//! `L = lambda mean G^2`, gradient through the normalisation.
//!
//! Backends compose SimBal from two GEMMs around [`simbal_residual`]; [`simbal_direct`] is the
//! independent scalar reference the conformance suite compares them with.

use crate::config::{SimBalConfig, SimBalNorm, WeightLayout};
use crate::scalar::Scalar;

/// Element-wise middle pass: turns the Gram matrix `R^T R` (`E x E`, in place) into the
/// multiplier `M` with `dL/dR = R M` (`D x E` layout) and returns the loss value.
///
/// L1: `M = 2 lambda sign(G)`; FrobeniusSq: `M = 4 lambda G`; ScaleFree (on the Gram matrix of
/// the normalised columns): `M = 4 lambda G / E^2`, to be projected by [`scale_free_project`].
pub fn simbal_residual<T: Scalar>(cfg: &SimBalConfig, e: usize, gram: &mut [T]) -> T {
    let lambda = T::of(cfg.lambda);
    let mut loss = T::zero();
    let two = T::of(2.0);
    let four = T::of(4.0);
    let ee = T::of_usize(e) * T::of_usize(e);
    for (ab, v) in gram.iter_mut().enumerate() {
        let g = if ab / e == ab % e { *v - T::one() } else { *v };
        match cfg.norm {
            SimBalNorm::L1 => {
                loss = loss + g.abs();
                *v = two * lambda * sign0(g);
            }
            SimBalNorm::FrobeniusSq => {
                loss = loss + g * g;
                *v = four * lambda * g;
            }
            SimBalNorm::ScaleFree => {
                loss = loss + g * g;
                *v = four * lambda * g / ee;
            }
        }
    }
    match cfg.norm {
        SimBalNorm::ScaleFree => lambda * loss / ee,
        _ => lambda * loss,
    }
}

/// `sign(x)` with `sign(0) = 0` (SPEC), NaN mapped to 0.
#[inline]
pub fn sign0<T: Scalar>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// Strides to walk `R` as `D x E` whichever layout it is stored in: element `(d, e)` is at
/// `d * row + e * col`.
#[inline]
pub fn strides(layout: WeightLayout, d: usize, e: usize) -> (usize, usize) {
    match layout {
        WeightLayout::DxE => (e, 1),
        WeightLayout::ExD => (1, d),
    }
}

/// Column norms `|r_e|` of `R` (viewed `D x E`) into `norms` (`E`).
pub fn column_norms<T: Scalar>(layout: WeightLayout, d: usize, e: usize, r: &[T], norms: &mut [T]) {
    let (rs, cs) = strides(layout, d, e);
    for (c, nrm) in norms.iter_mut().enumerate().take(e) {
        let mut s = T::zero();
        for i in 0..d {
            let v = r[i * rs + c * cs];
            s = s + v * v;
        }
        *nrm = s.sqrt();
    }
}

/// Writes `R` with unit columns into `rn` (same layout); a zero column stays zero.
pub fn normalize_columns<T: Scalar>(
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[T],
    norms: &[T],
    rn: &mut [T],
) {
    let (rs, cs) = strides(layout, d, e);
    for c in 0..e {
        let inv = inv_norm(norms[c]);
        for i in 0..d {
            let at = i * rs + c * cs;
            rn[at] = r[at] * inv;
        }
    }
}

/// `1 / |r|` of a column norm, 0 for a zero column (whose normalised column is 0).
fn inv_norm<T: Scalar>(norm: T) -> T {
    if norm > T::zero() {
        T::one() / norm
    } else {
        T::zero()
    }
}

/// Backward through column normalisation, in place: `g` holds `dL/dR_n` on entry and
/// `dL/dR = (g - r_n <r_n, g>) / |r|` per column on exit (0 for a zero column). Adds it to
/// `out` when `accumulate`, else writes it there.
pub fn scale_free_project<T: Scalar>(
    layout: WeightLayout,
    d: usize,
    e: usize,
    rn: &[T],
    norms: &[T],
    g: &[T],
    out: &mut [T],
    accumulate: bool,
) {
    let (rs, cs) = strides(layout, d, e);
    for c in 0..e {
        let mut dot = T::zero();
        for i in 0..d {
            let at = i * rs + c * cs;
            dot = dot + rn[at] * g[at];
        }
        let inv = inv_norm(norms[c]);
        for i in 0..d {
            let at = i * rs + c * cs;
            let v = (g[at] - rn[at] * dot) * inv;
            out[at] = if accumulate { out[at] + v } else { v };
        }
    }
}

/// Independent scalar reference of SimBal straight from the formulas: returns the loss and, if
/// `grad` is given, adds `dL/dR` to it (same layout as `r`). Allocates; not for hot paths.
pub fn simbal_direct<T: Scalar>(
    cfg: &SimBalConfig,
    layout: WeightLayout,
    d: usize,
    e: usize,
    r: &[T],
    grad: Option<&mut [T]>,
) -> T {
    use alloc::vec;
    let (rs, cs) = strides(layout, d, e);
    let at = |i: usize, c: usize| i * rs + c * cs;
    let mut norms = vec![T::one(); e];
    let mut rn = r.to_vec();
    if cfg.norm == SimBalNorm::ScaleFree {
        column_norms(layout, d, e, r, &mut norms);
        normalize_columns(layout, d, e, r, &norms, &mut rn);
    }
    let lambda = T::of(cfg.lambda);
    let ee = T::of_usize(e * e);
    let mut g = vec![T::zero(); e * e];
    let mut loss = T::zero();
    for a in 0..e {
        for b in 0..e {
            let mut s = T::zero();
            for i in 0..d {
                s = s + rn[at(i, a)] * rn[at(i, b)];
            }
            let v = if a == b { s - T::one() } else { s };
            g[a * e + b] = v;
            loss = loss
                + match cfg.norm {
                    SimBalNorm::L1 => v.abs(),
                    _ => v * v,
                };
        }
    }
    let loss = match cfg.norm {
        SimBalNorm::ScaleFree => lambda * loss / ee,
        _ => lambda * loss,
    };
    if let Some(out) = grad {
        // dL/dRn(i, a) = sum_b Rn(i, b) * m(G_ab) * c, with m = sign or identity.
        let mut dn = vec![T::zero(); d * e];
        for i in 0..d {
            for a in 0..e {
                let mut s = T::zero();
                for b in 0..e {
                    let m = match cfg.norm {
                        SimBalNorm::L1 => T::of(2.0) * sign0(g[b * e + a]),
                        SimBalNorm::FrobeniusSq => T::of(4.0) * g[b * e + a],
                        SimBalNorm::ScaleFree => T::of(4.0) * g[b * e + a] / ee,
                    };
                    s = s + rn[at(i, b)] * m;
                }
                dn[at(i, a)] = lambda * s;
            }
        }
        if cfg.norm == SimBalNorm::ScaleFree {
            scale_free_project(layout, d, e, &rn, &norms, &dn, out, true);
        } else {
            for (o, v) in out.iter_mut().zip(&dn) {
                *o = *o + *v;
            }
        }
    }
    loss
}
