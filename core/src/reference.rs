//! The scalar reference backend: plain loops over host `Vec`s, every default kernel. Slow and
//! obviously right; every other backend is checked against it.

use crate::backend::{check_gemm, Backend};
use crate::error::Result;
use crate::ops::gemm::{gemm_reference, Gemm};
use crate::scalar::Scalar;
use alloc::string::String;
use alloc::vec::Vec;
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

impl<T: Scalar> Backend for Reference<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type IdxBuf = Vec<u32>;

    fn name(&self) -> String {
        alloc::format!("reference-{}", T::NAME)
    }
    crate::host_vec_memory!(T);

    fn gemm(&self, g: &Gemm, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        check_gemm(g, a.len(), b.len(), c.len())?;
        gemm_reference(g, a, b, c);
        Ok(())
    }
}
