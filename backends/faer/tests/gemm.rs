//! `Faer::gemm` against the reference GEMM: every transpose flag, alpha/beta, odd and empty
//! shapes, sequential and split across blocks; bad lengths are typed errors (core's check).

mod common;

use common::{assert_close, gemm, normal, per_elem_test};
use simbal_core::{Gemm, Memory, Reference, Scalar, SimbalError};
use simbal_faer::{Faer, FaerElem, Par};

fn backends<T: FaerElem>() -> Vec<Faer<T>> {
    vec![
        Faer::with_par(Par::Seq),
        Faer::with_par(Par::rayon(2)),
        Faer::with_par(Par::rayon(5)),
    ]
}

/// Shapes `(m, n, k)`: tiny, odd, skinny (router-like) and big enough to be split in blocks.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (17, 33, 65),
    (2, 130, 9),
    (513, 7, 130),
    (130, 513, 7),
    (300, 40, 200),
    (40, 300, 200),
    (64, 64, 1),
    (1, 97, 300),
    (97, 1, 300),
    // Skinny outputs (n <= 16, m and k >= 64) take the register-blocked kernels: row counts
    // and inner sizes off multiples of 4, every width class, split across tasks.
    (64, 8, 64),
    (131, 8, 67),
    (67, 16, 131),
    (258, 1, 65),
    (129, 3, 256),
    (1000, 13, 70),
    (70, 16, 1000),
];

fn check_shape<T: FaerElem>(m: usize, n: usize, k: usize, seed: u64) {
    let reference = Reference::<T>::new();
    for ta in [false, true] {
        for tb in [false, true] {
            for (alpha, beta) in [
                (1.0, 0.0),
                (1.0, 1.0),
                (-0.5, 0.0),
                (2.0, 1.0),
                (0.75, -1.5),
            ] {
                let mut g = Gemm::new(m, n, k).alpha(alpha).beta(beta);
                g.trans_a = ta;
                g.trans_b = tb;
                let a = normal::<T>(seed, m * k, 1.0);
                let b = normal::<T>(seed + 1, k * n, 1.0);
                let c0 = normal::<T>(seed + 2, m * n, 1.0);
                let mut want = c0.clone();
                gemm(&reference, &g, &a, &b, &mut want).unwrap();
                for be in backends::<T>() {
                    let mut got = c0.clone();
                    gemm(&be, &g, &a, &b, &mut got).unwrap();
                    assert_close(
                        &format!("gemm {m}x{n}x{k} {g:?} {:?}", be.par()),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

fn all_shapes<T: FaerElem>() {
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        check_shape::<T>(m, n, k, 100 * i as u64);
    }
}

per_elem_test!(all_shapes: gemm_matches_reference_f32 = f32, gemm_matches_reference_f64 = f64);

fn beta_zero_ignores_nan<T: FaerElem>() {
    for be in backends::<T>() {
        for (m, n, k) in [(4, 3, 2), (300, 40, 200)] {
            let a = normal::<T>(1, m * k, 1.0);
            let b = normal::<T>(2, k * n, 1.0);
            let mut want = vec![T::zero(); m * n];
            gemm(
                &Reference::<T>::new(),
                &Gemm::new(m, n, k),
                &a,
                &b,
                &mut want,
            )
            .unwrap();
            let mut c = vec![T::nan(); m * n];
            gemm(&be, &Gemm::new(m, n, k), &a, &b, &mut c).unwrap();
            assert_close("beta = 0 over NaN", &c, &want);
        }
    }
}

#[test]
fn beta_zero_overwrites_nan() {
    beta_zero_ignores_nan::<f32>();
    beta_zero_ignores_nan::<f64>();
}

fn empty_shapes<T: FaerElem>() {
    for be in backends::<T>() {
        // k = 0: C = beta C (0 with beta = 0).
        let mut c = vec![T::of(3.0); 6];
        gemm(&be, &Gemm::new(2, 3, 0), &[], &[], &mut c).unwrap();
        assert!(c.iter().all(|&v| v == T::zero()));
        let mut c = vec![T::of(3.0); 6];
        gemm(&be, &Gemm::new(2, 3, 0).beta(0.5), &[], &[], &mut c).unwrap();
        assert!(c.iter().all(|&v| v == T::of(1.5)));
        // m = 0 or n = 0: nothing to write.
        let mut c: Vec<T> = vec![];
        gemm(&be, &Gemm::new(0, 3, 4), &[], &[T::one(); 12], &mut c).unwrap();
        gemm(&be, &Gemm::new(3, 0, 4), &[T::one(); 12], &[], &mut c).unwrap();
    }
}

#[test]
fn empty_shapes_f32_f64() {
    empty_shapes::<f32>();
    empty_shapes::<f64>();
}

#[test]
fn bad_lengths_are_typed_errors() {
    let be = Faer::<f32>::new();
    let a = vec![0.0f32; 6];
    let b = vec![0.0f32; 12];
    let mut c = vec![0.0f32; 8];
    let g = Gemm::new(2, 4, 3);
    assert!(gemm(&be, &g, &a, &b, &mut c).is_ok());
    let err = gemm(&be, &g, &a[..5], &b, &mut c).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "GEMM operand A",
            expected: 6,
            got: 5
        }
    ));
    let err = gemm(&be, &g.ta(), &a, &[0.0; 11], &mut c).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "GEMM operand B",
            ..
        }
    ));
    let err = gemm(&be, &g, &a, &b, &mut [0.0; 9]).unwrap_err();
    assert!(matches!(
        err,
        SimbalError::LengthMismatch {
            what: "GEMM operand C",
            ..
        }
    ));
    // Sizes whose product overflows are refused, not a panic.
    let huge = Gemm::new(usize::MAX / 2, 3, 3);
    assert!(gemm(&be, &huge, &a, &b, &mut c).is_err());
}

#[test]
fn name_and_host_views() {
    let be = Faer::<f64>::with_par(Par::Seq);
    assert_eq!(be.name(), "faer-f64");
    assert_eq!(Faer::<f32>::new().name(), "faer-f32");
    let mut buf = be.upload(&[1.0, 2.0]).unwrap();
    be.host_mut(&mut buf).unwrap()[1] = 5.0;
    assert_eq!(be.host(&buf).unwrap(), &[1.0, 5.0]);
    assert_eq!(be.len(&buf), 2);
    let mut out = [0.0; 2];
    be.download(&buf, &mut out).unwrap();
    assert_eq!(out, [1.0, 5.0]);
    assert!(be.download(&buf, &mut [0.0; 3]).is_err());
    assert!(be.write(&mut buf, &[1.0]).is_err());
    be.write(&mut buf, &[3.0, 4.0]).unwrap();
    assert_eq!(buf, [3.0, 4.0]);
    let mut idx = be.idx_zeros(3).unwrap();
    be.idx_host_mut(&mut idx).unwrap()[2] = 7;
    assert_eq!(be.idx_host(&idx).unwrap(), &[0, 0, 7]);
    assert!(be.idx_all_below(&idx, 8).unwrap());
    assert!(!be.idx_all_below(&idx, 7).unwrap());
    assert_eq!(be.zeros(4).unwrap(), [0.0; 4]);
    assert_eq!(<f64 as Scalar>::NAME, "f64");
}

/// Gram matrices of one buffer (`A^T A` and `A A^T`, the symmetric path: lower triangle and
/// mirror, split in two blocks of equal work) against the reference, with alpha; exactly
/// symmetric.
fn check_gram<T: FaerElem>() {
    let reference = Reference::<T>::new();
    for &(e, d) in &[(1, 1), (5, 3), (37, 300), (256, 700), (300, 40)] {
        let a = normal::<T>(e as u64 + 17, e * d, 1.0);
        for (ta, alpha) in [(true, 1.0), (false, 1.0), (true, -0.5), (false, 2.0)] {
            let mut g = Gemm::new(e, e, d).alpha(alpha);
            // `ta`: A is `d x e` (A^T A); otherwise `e x d` (A A^T).
            g.trans_a = ta;
            g.trans_b = !ta;
            let mut want = vec![T::zero(); e * e];
            gemm(&reference, &g, &a, &a, &mut want).unwrap();
            for be in backends::<T>() {
                let mut got = vec![T::one(); e * e];
                gemm(&be, &g, &a, &a, &mut got).unwrap();
                let what = format!("gram {e}x{d} ta {ta} alpha {alpha} {:?}", be.par());
                assert_close(&what, &got, &want);
                for i in 0..e {
                    for j in 0..i {
                        assert_eq!(got[i * e + j], got[j * e + i], "{what}: symmetric");
                    }
                }
            }
        }
    }
}

per_elem_test!(check_gram: gram_f32 = f32, gram_f64 = f64);
