//! `CubeclBackend::lbl_coefficients` (the `kernels::lbl` kernels) against the core's host formula
//! `lbl::reference::lbl_value_and_coef` in f64: both normalisations, one to many groups, a shard
//! factor (global-batch style).
mod common;
use common::{gpu, Rng, R};
use simbal_core::config::{LblLevel, LblNormalization};
use simbal_core::lbl::kernels::{GroupTokens, LblCoefficients};
use simbal_core::lbl::reference::{lbl_value_and_coef, LblScales};
use simbal_core::{Backend, LblConfig, Memory, SimbalError};
use simbal_cubecl::kernels::{lbl, DevBuf, KernelError};
use simbal_cubecl::CubeclBackend;

/// `lbl_coefficients` through core's check, as the router calls it.
fn coefficients(
    b: &CubeclBackend<R>,
    cfg: &LblConfig,
    e: usize,
    scales: LblScales,
    tokens: usize,
    counts: &DevBuf<u32>,
    sums: &DevBuf<f32>,
    coef: &mut DevBuf<f32>,
) -> simbal_core::Result<f32> {
    let a = LblCoefficients {
        cfg,
        e,
        scales,
        tokens: GroupTokens::Uniform(tokens),
        counts,
        sums,
        coef,
    };
    b.read_value(&b.lbl_coefficients(a.check(b)?)?)
}

/// Random counts (at most `k T` per group) and score sums (in `[0, T)`), `groups x e`.
fn inputs(rng: &mut Rng, s: &LblScales, e: usize, t: usize) -> (Vec<u32>, Vec<f32>) {
    let len = s.groups * e;
    let max_count = s.k * t + 1;
    let counts = (0..len).map(|_| rng.below(max_count) as u32).collect();
    let sums = (0..len).map(|_| rng.unif() * t as f32).collect();
    (counts, sums)
}

#[test]
fn lbl_coefficients_match_host_formula() {
    let Some(b) = gpu() else { return };
    let mut rng = Rng::new(77);
    // (groups, e, k, tokens per group, factor)
    let shapes = [
        (1, 1, 1, 1, 1.0),
        (1, 8, 2, 64, 1.0),
        (2, 7, 3, 5, 1.0),
        (3, 16, 4, 20, 1.0),
        (5, 64, 8, 33, 1.0),
        (16, 300, 6, 12, 1.0),
        (64, 300, 2, 40, 1.0), // 19200 coefficients: many cubes, long strided sum
        (1, 32, 4, 4096, 6.0), // global-batch style: merged tokens, a shard factor
    ];
    for &(groups, e, k, t, factor) in &shapes {
        for norm in [LblNormalization::Switch, LblNormalization::HuggingFace] {
            for alpha in [0.01, 1.0] {
                let cfg = LblConfig {
                    alpha,
                    level: LblLevel::MicroBatch,
                    normalization: norm,
                    ..LblConfig::default()
                };
                let s = LblScales { k, groups, factor };
                let (counts, sums) = inputs(&mut rng, &s, e, t);
                let tf = |_| t as f64;
                let sums64: Vec<f64> = sums.iter().map(|&v| f64::from(v)).collect();
                let mut want = vec![0.0f64; groups * e];
                let want_v =
                    lbl_value_and_coef(&cfg, e, &s, tf, |i| counts[i] as f64, &sums64, &mut want);
                let mut want32 = vec![0.0f32; groups * e];
                let want32_v =
                    lbl_value_and_coef(&cfg, e, &s, tf, |i| counts[i] as f64, &sums, &mut want32);

                let cb = b.idx_upload(&counts).unwrap();
                let sb = b.upload(&sums).unwrap();
                let mut coef = b.upload(&vec![f32::NAN; groups * e]).unwrap();
                let got_v = coefficients(&b, &cfg, e, s, t, &cb, &sb, &mut coef).unwrap();
                let mut got = vec![0.0f32; groups * e];
                b.download(&coef, &mut got).unwrap();

                let tag =
                    format!("groups={groups} e={e} k={k} T={t} x{factor} {norm:?} alpha={alpha}");
                // Each coefficient: two f32 roundings of an exact f64 product.
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let err = (f64::from(g) - w).abs();
                    assert!(
                        err <= 3e-7 * w.abs(),
                        "{tag}: coef[{i}] = {g}, f64 reference {w} (relative error {:e})",
                        err / w.abs().max(f64::MIN_POSITIVE)
                    );
                }
                // The value: a sum of non-negative terms, relative to its own magnitude.
                let err = (f64::from(got_v) - want_v).abs();
                assert!(
                    err <= 1e-5 * want_v.abs(),
                    "{tag}: value {got_v}, f64 reference {want_v}"
                );
                // And the SPEC's f32 comparison against the f32 host formula.
                let scale = want32_v.abs().max(1.0);
                assert!(
                    (got_v - want32_v).abs() <= 1e-4 * scale,
                    "{tag}: value {got_v}, f32 reference {want32_v}"
                );
            }
        }
    }
}

#[test]
fn lbl_coefficients_known_value() {
    // E = 4, k = 1, one group of 4 tokens, perfectly balanced: counts 1, mean score 1/4 each, so
    // the Switch loss is alpha and every coefficient alpha E c / (k T T) = alpha / 4.
    let Some(b) = gpu() else { return };
    let cfg = LblConfig {
        alpha: 0.5,
        ..Default::default()
    };
    let s = LblScales {
        k: 1,
        groups: 1,
        factor: 1.0,
    };
    let cb = b.idx_upload(&[1, 1, 1, 1]).unwrap();
    let sb = b.upload(&[1.0; 4]).unwrap();
    let mut coef = b.zeros(4).unwrap();
    let v = coefficients(&b, &cfg, 4, s, 4, &cb, &sb, &mut coef).unwrap();
    let mut got = [0.0f32; 4];
    b.download(&coef, &mut got).unwrap();
    assert_eq!(got, [0.125; 4]);
    assert_eq!(v, 0.5);
}

#[test]
fn lbl_coefficients_check_lengths() {
    let Some(b) = gpu() else { return };
    let cfg = LblConfig::default();
    let s = LblScales {
        k: 2,
        groups: 2,
        factor: 1.0,
    };
    let counts = b.idx_zeros(6).unwrap();
    let sums = b.zeros(6).unwrap();
    let mut coef = b.zeros(6).unwrap();
    let short_counts = b.idx_zeros(5).unwrap();
    let short_sums = b.zeros(5).unwrap();
    let mut short_coef = b.zeros(5).unwrap();
    let is_len = |r: simbal_core::Result<f32>, what: &str| match r {
        Err(SimbalError::LengthMismatch {
            what: w,
            expected: 6,
            got: 5,
        }) => assert_eq!(w, what),
        other => panic!("{what}: {other:?}"),
    };
    is_len(
        coefficients(&b, &cfg, 3, s, 4, &short_counts, &sums, &mut coef),
        "LBL group counts",
    );
    is_len(
        coefficients(&b, &cfg, 3, s, 4, &counts, &short_sums, &mut coef),
        "LBL group sums",
    );
    is_len(
        coefficients(&b, &cfg, 3, s, 4, &counts, &sums, &mut short_coef),
        "LBL coefficients",
    );
    // groups * e overflows: saturates, a mismatch rather than a panic.
    let huge = LblScales {
        groups: usize::MAX,
        ..s
    };
    assert!(matches!(
        coefficients(&b, &cfg, 3, huge, 4, &counts, &sums, &mut coef),
        Err(SimbalError::LengthMismatch {
            expected: usize::MAX,
            ..
        })
    ));
    // No groups: nothing to write, value 0.
    let none = LblScales { groups: 0, ..s };
    let (c0, s0) = (b.idx_zeros(0).unwrap(), b.zeros(0).unwrap());
    let mut k0 = b.zeros(0).unwrap();
    assert_eq!(
        coefficients(&b, &cfg, 3, none, 4, &c0, &s0, &mut k0).unwrap(),
        0.0
    );
    // The launcher itself refuses mismatched buffers and a missing output slot.
    let c = b.client();
    let out = DevBuf::<f32>::empty(c, 1);
    assert!(matches!(
        lbl::lbl_coefficients(c, 1.0, &short_counts, &sums, &coef, &out, 0),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        lbl::lbl_coefficients(c, 1.0, &counts, &sums, &coef, &out, 1),
        Err(KernelError::Length { .. })
    ));
}
