//! The suite must catch real bugs: each mutant is the reference backend with one deliberate
//! defect, and each listed check must fail on it (a check that cannot fail is a defect).

use simbal_conformance::{gemm, lbl, router, simbal, stats, validation};
use simbal_core::lbl::kernels::{GroupSums, GroupTokens, LblCoefficients};
use simbal_core::metrics::Entropy;
use simbal_core::router::kernels::{
    route_rows_staged, BackwardSums, Dispatch, LblCoef, Logits, Route, RouteSums, RouterBackward,
};
use simbal_core::simbal::kernels::{NormalizeColumns, SimbalResidual};
use simbal_core::stats::CollectStats;
use simbal_core::tokens::Groups;
use simbal_core::validate::max_abs;
use simbal_core::{
    Backend, Checked, GemmArgs, LblNormalization, Memory, Reference, Result, RoutingStats, Scalar,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

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

/// Runs the reference's `$kernel` on the mutant's arguments `$a`, rebuilt as `$S` for the
/// reference (the same host slices) and checked by it: each field is `$a`'s, or the value given
/// as `field: value`.
macro_rules! relay {
    ($self:ident.$kernel:ident($a:ident => $S:ident { $($f:ident $(: $e:expr)?),* $(,)? })) => {
        $self.r.$kernel($S { $($f: relay!(@ $a.$f $(, $e)?)),* }.check(&$self.r)?)
    };
    (@ $a:ident.$f:ident) => {
        $a.$f
    };
    (@ $a:ident.$f:ident, $e:expr) => {
        $e
    };
}

/// The mutant's token groups as the reference's (the same host slices).
fn regroup<'a, T: Scalar>(g: Groups<'a, Mutant<T>>) -> Groups<'a, Reference<T>> {
    match g {
        Groups::Runs { len } => Groups::Runs { len },
        Groups::Ids { ids, count } => Groups::Ids { ids, count },
    }
}

/// Each override changes its arguments or its result, and runs the reference kernel through
/// the same checks (`Args::check` on the reference backend, whose buffers are the same slices).
impl<T: Scalar> Backend for Mutant<T> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let mut gemm = a.gemm;
        if self.bug == Bug::Gemm {
            gemm.alpha *= 1.001;
        }
        relay!(self.gemm(a => GemmArgs { gemm: gemm, a, b, c }))
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
        let mut a = a;
        let max_abs_z = a.request.max_abs_z.then(|| max_abs(a.z));
        if self.bug == Bug::PlainIsSelection {
            // The LBL's plain top-k left as the selection (bias and groups included).
            route_rows_staged(self, &mut a)?;
            if let Some(pl) = a.plain.as_deref_mut() {
                pl.copy_from_slice(a.idx);
            }
            return Ok(RouteSums { max_abs_z });
        }
        if self.bug != Bug::TieHigh {
            route_rows_staged(self, &mut a)?;
            return Ok(RouteSums { max_abs_z });
        }
        // Reverse the expert order, route, and map back: ties now go to the higher index.
        let e = a.cfg.experts;
        let rev =
            |v: &[T]| -> Vec<T> { v.chunks(e).flat_map(|r| r.iter().rev().copied()).collect() };
        let zr = rev(a.z);
        let br = a.bias.map(rev);
        let mut rerouted = Route {
            cfg: a.cfg,
            n: a.n,
            logits: Logits::Given,
            bias: br.as_deref(),
            z: &mut zr.clone()[..],
            p: &mut *a.p,
            idx: &mut *a.idx,
            gates: &mut *a.gates,
            plain: a.plain.as_deref_mut(),
            request: a.request,
        };
        route_rows_staged(self, &mut rerouted)?;
        let p = rev(a.p);
        a.p.copy_from_slice(&p);
        for i in a.idx.iter_mut() {
            *i = (e - 1) as u32 - *i;
        }
        if let Some(pl) = a.plain.as_deref_mut() {
            for i in pl.iter_mut() {
                *i = (e - 1) as u32 - *i;
            }
        }
        Ok(RouteSums { max_abs_z })
    }
    fn dispatch(&self, a: Checked<Dispatch<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let mut cfg = *a.cfg;
        if self.bug == Bug::NoCapacity {
            cfg.capacity = None;
        }
        relay!(self.dispatch(a => Dispatch {
            cfg: &cfg, n, idx, gates, dropped, counts, order, offsets
        }))
    }
    fn router_backward(&self, a: Checked<RouterBackward<'_, Self>>) -> Result<BackwardSums<T>> {
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
        let lbl = a.lbl.map(|l| LblCoef {
            coef: l.coef,
            normalize: l.normalize && self.bug != Bug::NoLblNormalize,
        });
        let groups = match a.groups {
            Groups::Ids { count: 1, .. } if self.bug == Bug::MaskIgnored => Groups::whole(a.n),
            g => regroup(g),
        };
        relay!(self.router_backward(a => RouterBackward {
            cfg, n, z, p, idx, gates, dropped: dropped, dw, groups: groups, lbl: lbl,
            z_coef: z_coef, dz, request
        }))
    }
    fn group_column_sums(&self, a: Checked<GroupSums<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        relay!(self.group_column_sums(a => GroupSums {
            n, cols, groups: regroup(a.groups), normalize, a, out: &mut *a.out
        }))?;
        if self.bug == Bug::GroupSums && a.n > 1 {
            for (o, v) in a.out.iter_mut().zip(&a.a[..a.cols]) {
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
        relay!(self.lbl_coefficients(a => LblCoefficients {
            cfg: &cfg, e, scales, tokens: match a.tokens {
                GroupTokens::Uniform(n) => GroupTokens::Uniform(n),
                GroupTokens::PerGroup(t) => GroupTokens::PerGroup(t),
            }, counts, sums, coef
        }))
    }
    fn simbal_residual(&self, a: Checked<SimbalResidual<'_, Self>>) -> Result<T> {
        let a = a.into_inner();
        let l = relay!(self.simbal_residual(a => SimbalResidual { cfg, e, gram: &mut *a.gram }))?;
        if self.bug == Bug::SimbalScale {
            a.gram.iter_mut().for_each(|v| *v = *v * T::of(1.01));
        }
        Ok(l)
    }
    fn normalize_columns(&self, a: Checked<NormalizeColumns<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        relay!(self.normalize_columns(a => NormalizeColumns {
            layout, d, e, r, norms: &mut *a.norms, rn
        }))?;
        if self.bug == Bug::Norms {
            a.norms.iter_mut().for_each(|v| *v = *v * T::of(1.001));
        }
        Ok(())
    }
    fn routing_stats(&self, a: Checked<CollectStats<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        let e = a.counts.len();
        let p = if self.bug == Bug::StatsSums && a.n > 1 {
            &a.p[..a.p.len() - e]
        } else {
            a.p
        };
        if p.len() == a.p.len() {
            return relay!(self.routing_stats(a => CollectStats {
                n, k, p, normalize, idx, dropped, counts, plain, groups: regroup(a.groups),
                out: &mut *a.out
            }));
        }
        // The last token's scores left out of the sums only.
        let mut head = RoutingStats::default();
        let n = p.len() / e.max(1);
        let k = a.k;
        let groups = match a.groups {
            Groups::Ids { ids, count } => Groups::Ids {
                ids: &ids[..n],
                count,
            },
            Groups::Runs { .. } => Groups::whole(n),
        };
        relay!(self.routing_stats(a => CollectStats {
            n: n, k, p: p, normalize, idx: &a.idx[..n * k], dropped: &a.dropped[..n * k],
            counts, plain: a.plain.map(|pl| &pl[..n * k]), groups: groups, out: &mut head
        }))?;
        relay!(self.routing_stats(a => CollectStats {
            n, k, p, normalize, idx, dropped, counts, plain, groups: regroup(a.groups),
            out: &mut *a.out
        }))?;
        a.out.score_sums.copy_from_slice(&head.score_sums);
        Ok(())
    }
    fn routing_entropy(&self, a: Checked<Entropy<'_, Self>>) -> Result<T> {
        let a = a.into_inner();
        let h = relay!(self.routing_entropy(a => Entropy { n, groups: regroup(a.groups), e, p }))?;
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

/// The mutants: each defect (a `Bug`), the test that runs it, and the checks that must fail on
/// it.
macro_rules! mutants {
    ($($(#[$doc:meta])* $bug:ident: $test:ident => [$($check:path),+ $(,)?];)*) => {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Bug {
            $($(#[$doc])* $bug,)*
        }
        $(
            #[test]
            fn $test() {
                must_fail(Bug::$bug, &[$((stringify!($check), $check as Check)),+]);
            }
        )*
    };
}

mutants! {
    /// GEMM off by a relative 1e-3.
    Gemm: gemm_bug_is_caught =>
        [gemm::kernel_gemm, router::agree::forward, router::agree::backward, simbal::agree::loss];
    /// Top-k ties to the higher index.
    TieHigh: tie_bug_is_caught => [router::invariants::ties];
    /// Capacity ignored.
    NoCapacity: capacity_bug_is_caught => [
        router::agree::forward,
        router::invariants::dropped_get_no_gradient,
        router::invariants::ties,
    ];
    /// Backward without the z-loss term.
    NoZLossGrad: z_loss_gradient_bug_is_caught => [
        router::fd::router_objective, router::fd::logits_objective,
        router::agree::backward, router::kernels::router_backward,
    ];
    /// Backward lets dropped assignments pass gradient.
    DroppedLeak: dropped_leak_is_caught =>
        [router::invariants::dropped_get_no_gradient, router::fd::router_objective];
    /// SimBal multiplier scaled by 1.01.
    SimbalScale: simbal_bug_is_caught =>
        [simbal::fd::loss, simbal::agree::loss, simbal::kernels::residual];
    /// Group column sums off by one token.
    GroupSums: lbl_bug_is_caught => [
        lbl::invariants::alpha_at_balance, router::agree::backward, lbl::kernels::group_reductions,
        lbl::conventions::global_batch_is_exact,
    ];
    /// `check_finite` never reports.
    NoFiniteCheck: finite_check_bug_is_caught =>
        [validation::error_non_finite, validation::kernel_check_finite];
    /// Routing entropy off by 1e-3.
    Entropy: entropy_bug_is_caught =>
        [stats::kernels::routing_entropy, stats::agree::stats_and_metrics];
    /// Column norms off by a relative 1e-3.
    Norms: scale_free_bug_is_caught =>
        [simbal::kernels::column_normalisation, simbal::agree::loss, simbal::fd::loss];
    /// LBL coefficients always under the Switch normalisation (HuggingFace's factor `k` lost).
    LblSwitchOnly: lbl_normalisation_bug_is_caught =>
        [lbl::kernels::coefficients, router::agree::backward];
    /// The LBL's plain top-k written as the selection (bias and groups counted).
    PlainIsSelection: plain_top_k_bug_is_caught =>
        [router::kernels::route_given, router::agree::backward];
    /// The LBL's gradient skips the per-token score normalisation.
    NoLblNormalize: lbl_score_normalisation_bug_is_caught => [
        router::fd::router_objective, router::agree::backward, router::kernels::router_backward,
    ];
    /// The backward treats masked tokens as valid (one-group ids ignored).
    MaskIgnored: mask_bug_is_caught => [
        router::agree::backward, router::kernels::router_backward,
        lbl::conventions::masked_equals_compacted,
    ];
    /// Routing statistics' score sums miss the last token.
    StatsSums: stats_bug_is_caught => [
        stats::kernels::routing_stats,
        stats::agree::stats_and_metrics,
        stats::invariants::merged_stats,
    ];
}
