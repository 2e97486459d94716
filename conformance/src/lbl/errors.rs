//! The LBL's errors (see [`crate::harness::errors`]): sequence lengths, global statistics, a bad
//! `alpha`, lengths.

use super::bufs::{Bufs, Shape};
use crate::harness::errors::{check, invalid, lbl_at, refused, setup, start};
use crate::harness::kernel::Zeros;
use crate::harness::util::*;
use crate::router::bufs::{Bufs as RouterBufs, Shape as RouterShape};
use simbal_core::lbl::reference::LblScales;
use simbal_core::router::kernels::BackwardRequest;
use simbal_core::{
    Backend, LblConfig, LblLevel, LossConfig, RouterConfig, RoutingStats, SimbalError,
};

/// `SequenceLength`: a sequence length that does not divide `N`, and 0.
pub fn sequence_length<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::sequence_length";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    for seq_len in [3, 0] {
        let l = lbl_at(LblLevel::sequences(seq_len));
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
    start!(N, make);
    let l = lbl_at(LblLevel::GlobalBatch);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
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
/// backward given LBL coefficients of the wrong length: each call gets the right buffers but
/// one.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "lbl::errors::length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let (n, e, k) = (4usize, 3usize, 2usize);
    let right = || Bufs::new(Shape::of(n, e, k, 2), &Zeros(&c)).unwrap();
    let bad = || c.zeros(5).unwrap(); // not 2 x E
    let mut b = right();
    b.col_sums = bad();
    refused(N, "group_column_sums", b.group_sums().check(&c));
    let mut b = right();
    b.counts = c.idx_zeros(5).unwrap();
    refused(N, "group_counts", b.group_counts().check(&c));
    let cfg = LblConfig::default();
    let scales = LblScales {
        k,
        groups: 2,
        factor: 1.0,
    };
    let mut b = right();
    b.sums = bad();
    refused(
        N,
        "lbl_coefficients",
        b.coefficients(&cfg, scales).check(&c),
    );
    let rcfg = RouterConfig::new(e, k);
    let shape = RouterShape {
        group_len: 2,
        ..RouterShape::of(&rcfg, n)
    };
    let mut b = RouterBufs::new(shape, &Zeros(&c)).unwrap();
    b.coef = bad(); // not (n / 2) x E
    let backward = b.backward(&rcfg, true, 0.0, BackwardRequest::default());
    refused(N, "router_backward (LBL coefficients)", backward.check(&c));
}
