//! Shape checks at the boundary: every public entry point validates before it touches data.

use crate::error::{Result, SimbalError};
use crate::scalar::Scalar;

/// `N`, `D` and `E` must each be at least 1.
///
/// # Errors
/// [`SimbalError::ZeroDim`] naming the first that is 0.
pub fn check_dims(n: usize, d: usize, e: usize) -> Result<()> {
    if n == 0 {
        return Err(SimbalError::ZeroDim { what: "N" });
    }
    if d == 0 {
        return Err(SimbalError::ZeroDim { what: "D" });
    }
    if e == 0 {
        return Err(SimbalError::ZeroDim { what: "E" });
    }
    Ok(())
}

/// A buffer must have exactly the length its shape implies.
///
/// # Errors
/// [`SimbalError::LengthMismatch`] naming the buffer.
pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(SimbalError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// `rows x cols` without overflow.
///
/// # Errors
/// [`SimbalError::LengthMismatch`] (expected `usize::MAX`) when the product overflows.
pub fn product(what: &'static str, rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols).ok_or(SimbalError::LengthMismatch {
        what,
        expected: usize::MAX,
        got: 0,
    })
}

/// Reports the first non-finite value of a `rows x cols` row-major matrix with its position.
///
/// # Errors
/// [`SimbalError::NonFinite`] with the row and column of the first non-finite value.
pub fn check_finite<T: Scalar>(what: &'static str, cols: usize, data: &[T]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => Err(non_finite_at(what, cols, at)),
    }
}

/// The error for a non-finite value at flat position `at` of a `? x cols` row-major matrix.
pub fn non_finite_at(what: &'static str, cols: usize, at: usize) -> SimbalError {
    let cols = cols.max(1);
    SimbalError::NonFinite {
        what,
        row: at / cols,
        col: at % cols,
    }
}
