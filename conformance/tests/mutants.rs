//! The suite must catch real bugs: each mutant is the reference backend with one deliberate
//! defect, and each listed check must fail on it (a check that cannot fail is a defect).

use simbal_conformance::{agree, errors, fd, invariants, kernels};
use simbal_core::config::{RouterConfig, SimBalConfig, WeightLayout};
use simbal_core::ops::lbl::LblScales;
use simbal_core::{Backend, Gemm, LblCoef, LblConfig, LblNormalization, Reference, Result, Scalar};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    /// GEMM off by a relative 1e-3.
    Gemm,
    /// Top-k ties to the higher index.
    TieHigh,
    /// Capacity ignored.
    NoCapacity,
    /// Backward without the z-loss term.
    NoZLossGrad,
    /// Backward lets dropped assignments pass gradient.
    DroppedLeak,
    /// SimBal multiplier scaled by 1.01.
    SimbalScale,
    /// Group column sums off by one token.
    GroupSums,
    /// `check_finite` never reports.
    NoFiniteCheck,
    /// Routing entropy off by 1e-3.
    Entropy,
    /// Column norms off by a relative 1e-3.
    Norms,
    /// LBL coefficients always under the Switch normalisation (HuggingFace's factor `k` lost).
    LblSwitchOnly,
}

#[derive(Debug, Clone, Copy)]
struct Mutant<T> {
    bug: Bug,
    r: Reference<T>,
}

impl<T: Scalar> Backend for Mutant<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type IdxBuf = Vec<u32>;
    fn name(&self) -> String {
        format!("mutant-{:?}", self.bug)
    }
    simbal_core::host_vec_memory!(T);
    fn gemm(&self, g: &Gemm, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        let mut g = *g;
        if self.bug == Bug::Gemm {
            g.alpha *= 1.001;
        }
        self.r.gemm(&g, a, b, c)
    }
    fn route_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Vec<T>,
        bias: Option<&Vec<T>>,
        p: &mut Vec<T>,
        idx: &mut Vec<u32>,
        gates: &mut Vec<T>,
    ) -> Result<()> {
        if self.bug != Bug::TieHigh {
            return self.r.route_rows(cfg, n, z, bias, p, idx, gates);
        }
        // Reverse the expert order, route, and map back: ties now go to the higher index.
        let e = cfg.experts;
        let rev =
            |v: &Vec<T>| -> Vec<T> { v.chunks(e).flat_map(|r| r.iter().rev().copied()).collect() };
        let zr = rev(z);
        let br = bias.map(|b| b.iter().rev().copied().collect::<Vec<T>>());
        self.r.route_rows(cfg, n, &zr, br.as_ref(), p, idx, gates)?;
        *p = rev(p);
        for i in idx.iter_mut() {
            *i = (e - 1) as u32 - *i;
        }
        Ok(())
    }
    fn dispatch(
        &self,
        cfg: &RouterConfig,
        n: usize,
        idx: &Vec<u32>,
        gates: &mut Vec<T>,
        dropped: &mut Vec<u32>,
        counts: &mut Vec<u32>,
        order: &mut Vec<u32>,
        offsets: &mut Vec<u32>,
    ) -> Result<()> {
        let mut cfg = *cfg;
        if self.bug == Bug::NoCapacity {
            cfg.capacity = None;
        }
        self.r
            .dispatch(&cfg, n, idx, gates, dropped, counts, order, offsets)
    }
    fn router_backward_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Vec<T>,
        p: &Vec<T>,
        idx: &Vec<u32>,
        gates: &Vec<T>,
        dropped: &Vec<u32>,
        dw: &Vec<T>,
        lbl: Option<LblCoef<'_, Vec<T>>>,
        z_coef: T,
        dz: &mut Vec<T>,
    ) -> Result<()> {
        let z_coef = if self.bug == Bug::NoZLossGrad {
            T::of(0.0)
        } else {
            z_coef
        };
        let none = vec![0; dropped.len()];
        let dropped = if self.bug == Bug::DroppedLeak {
            &none
        } else {
            dropped
        };
        self.r
            .router_backward_rows(cfg, n, z, p, idx, gates, dropped, dw, lbl, z_coef, dz)
    }
    fn group_column_sums(
        &self,
        n: usize,
        cols: usize,
        gl: usize,
        a: &Vec<T>,
        out: &mut Vec<T>,
    ) -> Result<()> {
        self.r.group_column_sums(n, cols, gl, a, out)?;
        if self.bug == Bug::GroupSums && n > 1 {
            for (o, v) in out.iter_mut().zip(&a[..cols]) {
                *o = *o - *v;
            }
        }
        Ok(())
    }
    fn lbl_coefficients(
        &self,
        cfg: &LblConfig,
        e: usize,
        scales: &LblScales,
        counts: &Vec<u32>,
        sums: &Vec<T>,
        coef: &mut Vec<T>,
    ) -> Result<T> {
        let mut cfg = *cfg;
        if self.bug == Bug::LblSwitchOnly {
            cfg.normalization = LblNormalization::Switch;
        }
        self.r.lbl_coefficients(&cfg, e, scales, counts, sums, coef)
    }
    fn simbal_residual(&self, cfg: &SimBalConfig, e: usize, gram: &mut Vec<T>) -> Result<T> {
        let l = self.r.simbal_residual(cfg, e, gram)?;
        if self.bug == Bug::SimbalScale {
            gram.iter_mut().for_each(|v| *v = *v * T::of(1.01));
        }
        Ok(l)
    }
    fn normalize_columns(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        r: &Vec<T>,
        norms: &mut Vec<T>,
        rn: &mut Vec<T>,
    ) -> Result<()> {
        self.r.normalize_columns(layout, d, e, r, norms, rn)?;
        if self.bug == Bug::Norms {
            norms.iter_mut().for_each(|v| *v = *v * T::of(1.001));
        }
        Ok(())
    }
    fn routing_entropy(&self, n: usize, e: usize, p: &Vec<T>) -> Result<T> {
        let h = self.r.routing_entropy(n, e, p)?;
        Ok(if self.bug == Bug::Entropy {
            h + T::of(1e-3)
        } else {
            h
        })
    }
    fn check_finite(&self, what: &'static str, cols: usize, buf: &Vec<T>) -> Result<()> {
        if self.bug == Bug::NoFiniteCheck {
            return Ok(());
        }
        self.r.check_finite(what, cols, buf)
    }
}

type Check = fn(&dyn Fn() -> Option<Mutant<f64>>);

fn must_fail(bug: Bug, checks: &[(&str, Check)]) {
    let make = move || {
        Some(Mutant {
            bug,
            r: Reference::<f64>::new(),
        })
    };
    for (name, check) in checks {
        let caught = catch_unwind(AssertUnwindSafe(|| check(&make)));
        assert!(caught.is_err(), "{name} passed on the mutant {bug:?}");
    }
}

#[test]
fn gemm_bug_is_caught() {
    must_fail(
        Bug::Gemm,
        &[
            ("kernels::gemm", kernels::gemm),
            ("agree::forward", agree::forward),
            ("agree::backward", agree::backward),
            ("agree::simbal", agree::simbal),
        ],
    );
}

#[test]
fn tie_bug_is_caught() {
    must_fail(Bug::TieHigh, &[("invariants::ties", invariants::ties)]);
}

#[test]
fn capacity_bug_is_caught() {
    must_fail(
        Bug::NoCapacity,
        &[
            ("agree::forward", agree::forward),
            (
                "invariants::dropped_get_no_gradient",
                invariants::dropped_get_no_gradient,
            ),
            ("invariants::ties", invariants::ties),
        ],
    );
}

#[test]
fn z_loss_gradient_bug_is_caught() {
    must_fail(
        Bug::NoZLossGrad,
        &[
            ("fd::router_objective", fd::router_objective),
            ("fd::logits_objective", fd::logits_objective),
            ("agree::backward", agree::backward),
            (
                "kernels::router_backward_rows",
                kernels::router_backward_rows,
            ),
        ],
    );
}

#[test]
fn dropped_leak_is_caught() {
    must_fail(
        Bug::DroppedLeak,
        &[
            (
                "invariants::dropped_get_no_gradient",
                invariants::dropped_get_no_gradient,
            ),
            ("fd::router_objective", fd::router_objective),
        ],
    );
}

#[test]
fn simbal_bug_is_caught() {
    must_fail(
        Bug::SimbalScale,
        &[
            ("fd::simbal_loss", fd::simbal_loss),
            ("agree::simbal", agree::simbal),
            ("kernels::simbal_residual", kernels::simbal_residual),
        ],
    );
}

#[test]
fn lbl_bug_is_caught() {
    must_fail(
        Bug::GroupSums,
        &[
            (
                "invariants::lbl_alpha_at_balance",
                invariants::lbl_alpha_at_balance,
            ),
            ("agree::backward", agree::backward),
            ("kernels::group_reductions", kernels::group_reductions),
            ("agree::stats_and_metrics", agree::stats_and_metrics),
        ],
    );
}

#[test]
fn lbl_normalisation_bug_is_caught() {
    must_fail(
        Bug::LblSwitchOnly,
        &[
            ("kernels::lbl_coefficients", kernels::lbl_coefficients),
            ("agree::backward", agree::backward),
        ],
    );
}

#[test]
fn finite_check_bug_is_caught() {
    must_fail(
        Bug::NoFiniteCheck,
        &[
            ("errors::non_finite", errors::non_finite),
            ("kernels::check_finite", kernels::check_finite),
        ],
    );
}

#[test]
fn entropy_bug_is_caught() {
    must_fail(
        Bug::Entropy,
        &[
            ("kernels::routing_entropy", kernels::routing_entropy),
            ("agree::stats_and_metrics", agree::stats_and_metrics),
        ],
    );
}

#[test]
fn scale_free_bug_is_caught() {
    must_fail(
        Bug::Norms,
        &[
            (
                "kernels::column_normalisation",
                kernels::column_normalisation,
            ),
            ("agree::simbal", agree::simbal),
            ("fd::simbal_loss", fd::simbal_loss),
        ],
    );
}
