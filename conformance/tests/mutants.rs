//! The suite must catch real bugs: each mutant is the reference backend with one deliberate
//! defect, and each listed check must fail on it (a check that cannot fail is a defect).

use simbal_conformance::{gemm, lbl, router, simbal, stats, validation};
use simbal_core::lbl::kernels::{GroupSums, LblCoefficients};
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{
    route_rows_staged, Dispatch, Logits, Route, RouteSums, RouterBackward,
};
use simbal_core::simbal::kernels::{NormalizeColumns, SimbalResidual};
use simbal_core::stats::CollectStats;
use simbal_core::validate::max_abs;
use simbal_core::{
    Backend, Checked, GemmArgs, LblNormalization, Memory, Reference, Result, Scalar,
};
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
    /// Routing statistics' score sums miss the last token.
    StatsSums,
}

#[derive(Debug, Clone, Copy)]
struct Mutant<T> {
    bug: Bug,
    r: Reference<T>,
}

impl<T: Scalar> Memory for Mutant<T> {
    simbal_core::host_vec_memory!(T);
    fn name(&self) -> String {
        format!("mutant-{:?}", self.bug)
    }
}

/// Each override changes its arguments or its result, and runs the reference kernel through
/// the same checks (`Args::check` on the reference backend, whose buffers are the same slices).
impl<T: Scalar> Backend for Mutant<T> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let GemmArgs { mut gemm, a, b, c } = a.into_inner();
        if self.bug == Bug::Gemm {
            gemm.alpha *= 1.001;
        }
        self.r.gemm(GemmArgs { gemm, a, b, c }.check(&self.r)?)
    }
    fn route(&self, a: Checked<Route<'_, Self>>) -> Result<RouteSums<T>> {
        let a = a.into_inner();
        if let Logits::Tokens { gemm, x, r } = a.logits {
            self.gemm(
                GemmArgs {
                    gemm,
                    a: x,
                    b: r,
                    c: &mut *a.z,
                }
                .check(self)?,
            )?;
        }
        let max_abs_z = a.request.max_abs_z.then(|| max_abs(a.z));
        if self.bug != Bug::TieHigh {
            route_rows_staged(self, a.cfg, a.z, a.bias, a.p, a.idx, a.gates)?;
            return Ok(RouteSums { max_abs_z });
        }
        // Reverse the expert order, route, and map back: ties now go to the higher index.
        let e = a.cfg.experts;
        let rev =
            |v: &[T]| -> Vec<T> { v.chunks(e).flat_map(|r| r.iter().rev().copied()).collect() };
        let zr = rev(a.z);
        let br = a.bias.map(rev);
        route_rows_staged(self, a.cfg, &zr, br.as_deref(), a.p, a.idx, a.gates)?;
        let p = rev(a.p);
        a.p.copy_from_slice(&p);
        for i in a.idx.iter_mut() {
            *i = (e - 1) as u32 - *i;
        }
        Ok(RouteSums { max_abs_z })
    }
    fn dispatch(&self, a: Checked<Dispatch<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let mut cfg = *a.cfg;
        if self.bug == Bug::NoCapacity {
            cfg.capacity = None;
        }
        let d = Dispatch {
            cfg: &cfg,
            n: a.n,
            idx: a.idx,
            gates: a.gates,
            dropped: a.dropped,
            counts: a.counts,
            order: a.order,
            offsets: a.offsets,
        };
        self.r.dispatch(d.check(&self.r)?)
    }
    fn router_backward(
        &self,
        a: Checked<RouterBackward<'_, Self>>,
    ) -> Result<simbal_core::router::kernels::BackwardSums<T>> {
        let a = a.into_inner();
        let z_coef = if self.bug == Bug::NoZLossGrad {
            T::of(0.0)
        } else {
            a.z_coef
        };
        let none = vec![0; a.dropped.len()];
        let dropped = if self.bug == Bug::DroppedLeak {
            &none
        } else {
            a.dropped
        };
        let lbl = a.lbl.map(|l| simbal_core::router::kernels::LblCoef {
            coef: l.coef,
            group_len: l.group_len,
        });
        let b = RouterBackward {
            cfg: a.cfg,
            n: a.n,
            z: a.z,
            p: a.p,
            idx: a.idx,
            gates: a.gates,
            dropped,
            dw: a.dw,
            lbl,
            z_coef,
            dz: a.dz,
            request: a.request,
        };
        self.r.router_backward(b.check(&self.r)?)
    }
    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        let GroupSums {
            n,
            cols,
            group_len,
            a,
            out,
        } = a.into_inner();
        let g = GroupSums {
            n,
            cols,
            group_len,
            a,
            out: &mut *out,
        };
        self.r.group_column_sums(g.check(&self.r)?)?;
        if self.bug == Bug::GroupSums && n > 1 {
            for (o, v) in out.iter_mut().zip(&a[..cols]) {
                *o = *o - *v;
            }
        }
        Ok(())
    }
    fn lbl_coefficients(&self, a: Checked<LblCoefficients<'_, Self>>) -> Result<T> {
        let a = a.into_inner();
        let mut cfg = *a.cfg;
        if self.bug == Bug::LblSwitchOnly {
            cfg.normalization = LblNormalization::Switch;
        }
        let l = LblCoefficients {
            cfg: &cfg,
            e: a.e,
            scales: a.scales,
            counts: a.counts,
            sums: a.sums,
            coef: a.coef,
        };
        self.r.lbl_coefficients(l.check(&self.r)?)
    }
    fn simbal_residual(&self, a: Checked<SimbalResidual<'_, Self>>) -> Result<T> {
        let SimbalResidual { cfg, e, gram } = a.into_inner();
        let s = SimbalResidual {
            cfg,
            e,
            gram: &mut *gram,
        };
        let l = self.r.simbal_residual(s.check(&self.r)?)?;
        if self.bug == Bug::SimbalScale {
            gram.iter_mut().for_each(|v| *v = *v * T::of(1.01));
        }
        Ok(l)
    }
    fn normalize_columns(&self, a: Checked<NormalizeColumns<'_, Self>>) -> Result<()> {
        let NormalizeColumns {
            layout,
            d,
            e,
            r,
            norms,
            rn,
        } = a.into_inner();
        let c = NormalizeColumns {
            layout,
            d,
            e,
            r,
            norms: &mut *norms,
            rn,
        };
        self.r.normalize_columns(c.check(&self.r)?)?;
        if self.bug == Bug::Norms {
            norms.iter_mut().for_each(|v| *v = *v * T::of(1.001));
        }
        Ok(())
    }
    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        let CollectStats {
            n,
            k,
            p,
            counts,
            out,
        } = a.into_inner();
        let e = counts.len();
        let p = if self.bug == Bug::StatsSums && n > 1 {
            &p[..p.len() - e]
        } else {
            p
        };
        let s = CollectStats {
            n: p.len() / e.max(1),
            k,
            p,
            counts,
            out: &mut *out,
        };
        self.r.routing_stats(s.check(&self.r)?)?;
        out.tokens = n as u64; // only the sums are wrong
        out.dropped = ((n * k) as u64).saturating_sub(out.counts.iter().sum());
        Ok(())
    }
    fn routing_entropy(&self, a: Checked<Entropy<'_, Self>>) -> Result<T> {
        let Entropy { n, e, p } = a.into_inner();
        let h = self
            .r
            .routing_entropy(Entropy { n, e, p }.check(&self.r)?)?;
        Ok(if self.bug == Bug::Entropy {
            h + T::of(1e-3)
        } else {
            h
        })
    }
    fn check_finite(&self, what: &'static str, cols: usize, buf: &[T]) -> Result<()> {
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

/// One test per mutant: every check listed must fail on it.
macro_rules! caught {
    ($($test:ident: $bug:ident => [$($check:path),+ $(,)?];)*) => {
        $(
            #[test]
            fn $test() {
                must_fail(Bug::$bug, &[$((stringify!($check), $check as Check)),+]);
            }
        )*
    };
}

caught! {
    gemm_bug_is_caught: Gemm => [
        gemm::kernel_gemm,
        router::agree::forward,
        router::agree::backward,
        simbal::agree::loss,
    ];
    tie_bug_is_caught: TieHigh => [router::invariants::ties];
    capacity_bug_is_caught: NoCapacity => [
        router::agree::forward,
        router::invariants::dropped_get_no_gradient,
        router::invariants::ties,
    ];
    z_loss_gradient_bug_is_caught: NoZLossGrad => [
        router::fd::router_objective,
        router::fd::logits_objective,
        router::agree::backward,
        router::kernels::router_backward,
    ];
    dropped_leak_is_caught: DroppedLeak => [
        router::invariants::dropped_get_no_gradient,
        router::fd::router_objective,
    ];
    simbal_bug_is_caught: SimbalScale => [
        simbal::fd::loss,
        simbal::agree::loss,
        simbal::kernels::residual,
    ];
    lbl_bug_is_caught: GroupSums => [
        lbl::invariants::alpha_at_balance,
        router::agree::backward,
        lbl::kernels::group_reductions,
    ];
    stats_bug_is_caught: StatsSums => [
        stats::kernels::routing_stats,
        stats::agree::stats_and_metrics,
        stats::invariants::merged_stats,
    ];
    lbl_normalisation_bug_is_caught: LblSwitchOnly => [
        lbl::kernels::coefficients,
        router::agree::backward,
    ];
    finite_check_bug_is_caught: NoFiniteCheck => [
        validation::error_non_finite,
        validation::kernel_check_finite,
    ];
    entropy_bug_is_caught: Entropy => [
        stats::kernels::routing_entropy,
        stats::agree::stats_and_metrics,
    ];
    scale_free_bug_is_caught: Norms => [
        simbal::kernels::column_normalisation,
        simbal::agree::loss,
        simbal::fd::loss,
    ];
}
