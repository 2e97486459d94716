//! The scalar reference backend: plain loops over host slices, every default kernel. Slow and
//! obviously right; every other backend is checked against it.

use crate::backend::Backend;
use crate::checked::Checked;
use crate::error::Result;
use crate::gemm::{gemm_reference, GemmArgs};
use crate::memory::Memory;
use crate::scalar::Scalar;
use alloc::string::String;
use core::marker::PhantomData;

/// The scalar reference backend in `T` (`f32` or `f64`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference<T>(PhantomData<T>);

impl<T> Reference<T> {
    /// The reference backend.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T: Scalar> Memory for Reference<T> {
    crate::host_vec_memory!(T);

    fn name(&self) -> String {
        alloc::format!("reference-{}", T::NAME)
    }
}

impl<T: Scalar> Backend for Reference<T> {
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let a = a.into_inner();
        gemm_reference(&a.gemm, a.a, a.b, a.c);
        Ok(())
    }
}
