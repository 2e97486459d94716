//! Helpers shared by the dfdx backend's tests: random data, the SPEC-tolerance comparison and
//! downloads of dfdx buffers.
#![allow(dead_code)] // each test file uses its own subset

use simbal_core::{Checked, Memory, Result, Rng, Scalar, SimBalNorm, SimbalError};

/// Every SimBal variant.
pub const NORMS: [SimBalNorm; 3] = [
    SimBalNorm::L1,
    SimBalNorm::FrobeniusSq,
    SimBalNorm::ScaleFree,
];

/// `len` standard normal values.
pub fn rand_vec<T: Scalar>(rng: &mut Rng, len: usize) -> Vec<T> {
    let mut v = vec![T::zero(); len];
    rng.fill_normal(1.0, &mut v);
    v
}

/// `max |a - b| <= tol * max(1, max |b|)` at the SPEC tolerance of `T` (f64 1e-10, f32 1e-4).
pub fn close<T: Scalar>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.to_f64_lossy().abs()));
    let err = a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        m.max((x.to_f64_lossy() - y.to_f64_lossy()).abs())
    });
    assert!(
        err <= T::CONFORMANCE_TOL * scale,
        "{what}: max error {err:e} over scale {scale:e} (tol {:e})\n got {a:?}\nwant {b:?}",
        T::CONFORMANCE_TOL
    );
}

/// [`close`] for one value.
pub fn close_scalar<T: Scalar>(what: &str, a: T, b: T) {
    close(what, &[a], &[b]);
}

/// A buffer's elements on the host.
pub fn down<M: Memory>(m: &M, buf: &M::View) -> Vec<M::Elem> {
    let mut v = vec![M::Elem::of(0.0); m.len(buf)];
    m.download(buf, &mut v).expect("download");
    v
}

/// The error of a precondition function expected to refuse its arguments.
pub fn refused<T>(checked: Result<Checked<T>>) -> SimbalError {
    match checked {
        Err(e) => e,
        Ok(_) => panic!("the arguments were accepted"),
    }
}
