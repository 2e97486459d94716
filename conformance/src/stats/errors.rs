//! The statistics' errors (see [`crate::harness::errors`]): statistics of another expert count,
//! and the kernels' lengths.

use super::bufs::Bufs;
use crate::harness::errors::{check, lbl_at, refused, setup, start};
use crate::harness::kernel::Zeros;
use crate::harness::util::*;
use simbal_core::{Backend, LblLevel, RouterConfig, RoutingStats, SimbalError};

/// `StatsMismatch`: global statistics of another expert count; merging mismatched statistics.
pub fn stats_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "stats::errors::stats_mismatch";
    start!(N, make);
    let mut s = setup(make, RouterConfig::new(3, 1), 4, 2);
    let l = lbl_at(LblLevel::GlobalBatch);
    let mut g = RoutingStats::empty(4);
    g.tokens = 4;
    check(
        N,
        "global stats of 4 experts",
        s.backward(&l, Some(&g)),
        |e| {
            *e == SimbalError::StatsMismatch {
                expected: 3,
                got: 4,
            }
        },
    );
    let mut a = RoutingStats::empty(3);
    let before = a.clone();
    check(N, "merge 3 with 4", a.merge(&g), |e| {
        *e == SimbalError::StatsMismatch {
            expected: 3,
            got: 4,
        }
    });
    assert_eq!(a, before, "{N}: a failed merge changed the statistics");
    let bad = RoutingStats {
        counts: vec![0; 3],
        routed_counts: vec![0; 3],
        score_sums: vec![0.0; 2],
        tokens: 1,
        dropped: 0,
    };
    assert!(
        a.merge(&bad).is_err(),
        "{N}: merged statistics with score sums of the wrong length"
    );
    s.still_works(N);
}

/// `LengthMismatch` from the precondition functions of `routing_stats` and `routing_entropy`:
/// scores that are not `n x E`.
pub fn length_mismatch<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const N: &str = "stats::errors::length_mismatch";
    let Some(c) = acquire(make, N) else { return };
    let mut b = Bufs::new(2, 3, 1, &Zeros(&c)).unwrap();
    b.p = c.zeros(5).unwrap();
    refused(N, "routing_stats", b.collect().check(&c));
    refused(N, "routing_entropy", b.entropy().check(&c));
}
