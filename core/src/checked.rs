//! [`Checked`]: kernel arguments whose preconditions core has verified. Every kernel of
//! [`crate::Backend`] takes its arguments wrapped in it, and only core can wrap them (through each
//! argument struct's `check`), so a backend never restates a length check and a kernel is never
//! reached with buffers that do not fit.

use core::ops::Deref;

/// Arguments `T` that passed their precondition function.
#[derive(Debug)]
pub struct Checked<T>(T);

impl<T> Checked<T> {
    /// Wraps arguments whose checks just passed (core only).
    pub(crate) fn new(args: T) -> Self {
        Self(args)
    }
    /// The arguments, for destructuring in a kernel.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Checked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
