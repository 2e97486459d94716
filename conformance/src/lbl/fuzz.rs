//! The LBL's kernels on arbitrary input (see [`crate::harness::fuzz`]).

use crate::harness::fuzz::*;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::lbl::kernels::{GroupCounts, GroupSums, LblCoefficients};
use simbal_core::lbl::reference::LblScales;
use simbal_core::memory::{idx_view, idx_view_mut, view, view_mut};
use simbal_core::{Backend, LblConfig, LblLevel, LblNormalization};

/// `group_column_sums`, `group_counts` and `lbl_coefficients` on arbitrary shapes, lengths,
/// indices and values (`k = 0`, zero tokens and overflowing `groups x E` included), each
/// through its precondition function.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::fuzz::kernels";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        dims(),
        (dim(), dim()),
        pool(),
        (coef(), any::<bool>(), 0..=4usize),
    );
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, d, e), (k, group_len), pool, (alpha, hf, score_tokens)) = &input;
        let (n, d, e, k, gl) = (*n, *d, *e, *k, *group_len);
        let f = Filler::new(pool);
        let ub = |v: Vec<f64>| up(&b, &v).ctx("upload");
        let ui = |v: Vec<u32>| b.idx_upload(&v).ctx("idx_upload");
        let z = ub(f.vals(mul(n, e)))?;
        let idx = ui(f.idx(mul(n, k), e))?;
        let dropped = ui(f.idx(mul(n, k), 2))?;
        let mut sums = ub(f.vals(mul(n / gl.max(1), d)))?;
        guard("group_column_sums", &input, || {
            GroupSums {
                n,
                cols: d,
                group_len: gl,
                a: view::<B>(&z),
                out: view_mut::<B>(&mut sums),
            }
            .check(&b)
            .and_then(|a| b.group_column_sums(a))
        })?
        .ok();
        let mut gc = ui(f.idx(mul(n / gl.max(1), e), 3))?;
        guard("group_counts", &input, || {
            GroupCounts {
                n,
                k,
                e,
                group_len: gl,
                idx: idx_view::<B>(&idx),
                dropped: idx_view::<B>(&dropped),
                out: idx_view_mut::<B>(&mut gc),
            }
            .check(&b)
            .and_then(|a| b.group_counts(a))
        })?
        .ok();
        // lbl_coefficients (groups as the group counts above; `k = 0`, zero tokens, overflowing
        // `groups x E` included).
        let lcfg = LblConfig {
            alpha: *alpha,
            level: LblLevel::MicroBatch,
            normalization: if *hf {
                LblNormalization::HuggingFace
            } else {
                LblNormalization::Switch
            },
        };
        let scales = LblScales {
            k,
            count_tokens: gl as f64,
            score_tokens: *score_tokens as f64,
            groups: n / gl.max(1),
        };
        let lsums = ub(f.vals(mul(n / gl.max(1), e)))?;
        let mut lcoef = ub(f.vals(mul(n / gl.max(1), e)))?;
        guard("lbl_coefficients", &input, || {
            LblCoefficients {
                cfg: &lcfg,
                e,
                scales,
                counts: idx_view::<B>(&gc),
                sums: view::<B>(&lsums),
                coef: view_mut::<B>(&mut lcoef),
            }
            .check(&b)
            .and_then(|a| b.lbl_coefficients(a))
        })?
        .ok();
        Ok(())
    });
}
