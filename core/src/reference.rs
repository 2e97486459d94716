//! The scalar reference backend: plain loops over host `Vec`s, every default kernel. Slow and
//! obviously right; every other backend is checked against it.

use crate::backend::{check_gemm, Backend};
use crate::error::Result;
use crate::ops::gemm::{gemm_reference, Gemm};
use crate::scalar::Scalar;
use crate::shape::check_len;
use alloc::string::String;
use alloc::vec;
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
    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }
    fn upload(&self, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }
    fn download(&self, buf: &Vec<T>, host: &mut [T]) -> Result<()> {
        check_len("download target", buf.len(), host.len())?;
        host.copy_from_slice(buf);
        Ok(())
    }
    fn write(&self, buf: &mut Vec<T>, host: &[T]) -> Result<()> {
        check_len("write source", buf.len(), host.len())?;
        buf.copy_from_slice(host);
        Ok(())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn idx_zeros(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn idx_upload(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn idx_download(&self, buf: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        check_len("download target", buf.len(), host.len())?;
        host.copy_from_slice(buf);
        Ok(())
    }
    fn idx_write(&self, buf: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        check_len("write source", buf.len(), host.len())?;
        buf.copy_from_slice(host);
        Ok(())
    }
    fn idx_len(&self, buf: &Vec<u32>) -> usize {
        buf.len()
    }
    fn is_host(&self) -> bool {
        true
    }
    fn host<'a>(&self, buf: &'a Vec<T>) -> Option<&'a [T]> {
        Some(buf)
    }
    fn host_mut<'a>(&self, buf: &'a mut Vec<T>) -> Option<&'a mut [T]> {
        Some(buf)
    }
    fn idx_host<'a>(&self, buf: &'a Vec<u32>) -> Option<&'a [u32]> {
        Some(buf)
    }
    fn idx_host_mut<'a>(&self, buf: &'a mut Vec<u32>) -> Option<&'a mut [u32]> {
        Some(buf)
    }
    fn gemm(&self, g: &Gemm, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        check_gemm(g, a.len(), b.len(), c.len())?;
        gemm_reference(g, a, b, c);
        Ok(())
    }
}
