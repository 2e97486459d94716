//! The LBL's kernels on arbitrary input (see [`crate::harness::fuzz`]).

use super::bufs::{Bufs, Shape};
use crate::harness::fuzz::*;
use crate::harness::kernel::call;
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::lbl::reference::LblScales;
use simbal_core::{Backend, LblConfig, LblLevel, LblNormalization};

/// `group_column_sums`, `group_counts` and `lbl_coefficients` on arbitrary shapes, lengths,
/// indices and values (`k = 0`, zero tokens and overflowing `groups x E` included), each
/// through its precondition function, on one set of buffers (the group counts are the
/// coefficients' counts).
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "lbl::fuzz::kernels";
    // The pool is drawn third (the order this check's seed drew its cases in); the driver
    // takes it last.
    let strategy = (
        dims(),
        (dim(), dim()),
        pool(),
        (coef(), any::<bool>(), 0..=4usize),
    )
        .prop_map(|(dims, kg, pool, lbl)| ((dims, kg, lbl), pool));
    fuzz_check(make, NAME, strategy, |cx, input| {
        let ((n, d, e), (k, group_len), (alpha, hf, score_tokens)) = input;
        let (n, k, gl, b) = (*n, *k, *group_len, cx.b);
        let shape = Shape {
            cols: *d,
            ..Shape::of(n, *e, k, gl)
        };
        let mut bufs = Bufs::new(shape, cx).ctx("upload")?;
        cx.guard("group_column_sums", || {
            call!(b, group_column_sums(bufs.group_sums()))
        })?
        .ok();
        cx.guard("group_counts", || {
            call!(b, group_counts(bufs.group_counts()))
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
            ..LblConfig::default()
        };
        let scales = LblScales {
            k,
            groups: n / gl.max(1),
            factor: *score_tokens as f64,
        };
        cx.guard("lbl_coefficients", || {
            call!(b, lbl_coefficients(bufs.coefficients(&lcfg, scales)))
        })?
        .ok();
        Ok(())
    });
}
