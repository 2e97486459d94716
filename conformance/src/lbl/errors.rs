//! The LBL's errors (see [`crate::harness::errors`]): sequence lengths, global statistics, a bad
//! `alpha`, lengths.

use crate::harness::errors::{check, invalid, refused, setup, start};
use crate::harness::util::*;
use simbal_core::lbl::kernels::{GroupCounts, GroupSums, LblCoefficients};
use simbal_core::lbl::reference::LblScales;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::router::kernels::{BackwardRequest, LblCoef, RouterBackward};
use simbal_core::{
    Backend, LblConfig, LblLevel, LossConfig, RouterConfig, RoutingStats, Scalar, SimbalError,
};

/// `SequenceLength`: a sequence length that does not divide `N`, and 0.
pub fn sequence_length<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::sequence_length";
    start!("lbl::errors::sequence_length", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    for seq_len in [3, 0] {
        let l = LossConfig::none().with_lbl(LblConfig {
            level: LblLevel::Sequence { seq_len },
            ..LblConfig::default()
        });
        check(
            N,
            &format!("seq_len {seq_len} of 4"),
            s.backward(&l, None),
            |e| *e == SimbalError::SequenceLength { seq_len, tokens: 4 },
        );
    }
    s.still_works(N);
}

/// `MissingGlobalStats`: global-batch LBL without statistics, or with 0 tokens.
pub fn missing_global_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::missing_global_stats";
    start!("lbl::errors::missing_global_stats", make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    let l = LossConfig::none().with_lbl(LblConfig {
        level: LblLevel::GlobalBatch,
        ..LblConfig::default()
    });
    check(N, "no stats", s.backward(&l, None), |e| {
        *e == SimbalError::MissingGlobalStats
    });
    check(
        N,
        "0 tokens",
        s.backward(&l, Some(&RoutingStats::empty(3))),
        |e| *e == SimbalError::MissingGlobalStats,
    );
    s.still_works(N);
}

/// `InvalidCoefficient`: a NaN `alpha`.
pub fn invalid_coefficient<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::invalid_coefficient";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 3, 2);
    let lbl = LossConfig::none().with_lbl(LblConfig {
        alpha: f64::NAN,
        ..LblConfig::default()
    });
    check(
        N,
        "alpha NaN",
        s.backward(&lbl, None),
        invalid("LBL alpha", f64::NAN),
    );
    s.still_works(N);
}

/// `LengthMismatch` from the LBL kernels' precondition functions, and from the router's
/// backward given LBL coefficients of the wrong length.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let (n, e, k) = (4usize, 3usize, 2usize);
    let (p, mut bad) = (c.zeros(n * e).unwrap(), c.zeros(5).unwrap());
    let (idx, dropped) = (c.idx_zeros(n * k).unwrap(), c.idx_zeros(n * k).unwrap());
    let mut counts = c.idx_zeros(5).unwrap();
    let sums = GroupSums {
        n,
        cols: e,
        group_len: 2,
        a: view::<B>(&p),
        out: view_mut::<B>(&mut bad), // not 2 x E
    };
    refused(N, "group_column_sums", sums.check(&c));
    let group_counts = GroupCounts {
        n,
        k,
        e,
        group_len: 2,
        idx: idx_view::<B>(&idx),
        dropped: idx_view::<B>(&dropped),
        out: idx_view_mut::<B>(&mut counts),
    };
    refused(N, "group_counts", group_counts.check(&c));
    let cfg = LblConfig::default();
    let (ok_counts, mut coef) = (c.idx_zeros(2 * e).unwrap(), c.zeros(2 * e).unwrap());
    let coefficients = LblCoefficients {
        cfg: &cfg,
        e,
        scales: LblScales {
            k,
            count_tokens: 2.0,
            score_tokens: 2.0,
            groups: 2,
        },
        counts: idx_view::<B>(&ok_counts),
        sums: view::<B>(&bad),
        coef: view_mut::<B>(&mut coef),
    };
    refused(N, "lbl_coefficients", coefficients.check(&c));
    let rcfg = RouterConfig::new(e, k);
    let (gates, mut dz) = (c.zeros(n * k).unwrap(), c.zeros(n * e).unwrap());
    let backward = RouterBackward {
        cfg: &rcfg,
        n,
        z: view::<B>(&p),
        p: view::<B>(&p),
        idx: idx_view::<B>(&idx),
        gates: view::<B>(&gates),
        dropped: idx_view::<B>(&dropped),
        dw: view::<B>(&gates),
        lbl: Some(LblCoef {
            coef: view::<B>(&bad), // not (n / 2) x E
            group_len: 2,
        }),
        z_coef: B::Elem::of(0.0),
        dz: view_mut::<B>(&mut dz),
        request: BackwardRequest::default(),
    };
    refused(N, "router_backward (LBL coefficients)", backward.check(&c));
}
