//! Host conversions shared by the backends' defaults: burn tensor data to simbal's host types.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{Bool, Int, Tensor, TensorData, TensorPrimitive};
use simbal_core::{Result, SimbalError};

/// A burn failure as simbal's backend error.
pub(crate) fn backend_err(what: &str, e: impl core::fmt::Debug) -> SimbalError {
    SimbalError::Backend {
        message: format!("burn: {what}: {e:?}"),
    }
}

/// Reads a tensor's data (one synchronisation on a device).
fn read<B: Backend, const D: usize, K: burn::tensor::BasicOps<B>>(
    t: Tensor<B, D, K>,
) -> Result<TensorData> {
    t.try_into_data()
        .map_err(|e| backend_err("reading a tensor", e))
}

/// A float tensor's elements as `T`, row-major.
pub(crate) fn float_host<B: Backend, T: burn::tensor::Element>(
    t: FloatTensor<B>,
) -> Result<Vec<T>> {
    let data = read(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)))?;
    data.convert::<T>()
        .into_vec::<T>()
        .map_err(|e| backend_err("float data", e))
}

/// A bool tensor's entries (a token mask), row-major.
pub(crate) fn bool_data<B: Backend>(t: BoolTensor<B>) -> Result<Vec<bool>> {
    let ints = Tensor::<B, 1, Bool>::from_primitive(t).int();
    let data = read(ints)?;
    let v = data
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| backend_err("mask data", e))?;
    Ok(v.into_iter().map(|x| x != 0).collect())
}

/// An int tensor of sequence offsets as `u32`. An entry outside `u32` becomes `u32::MAX`, which
/// the router's offset check then reports with its position.
pub(crate) fn offsets_data<B: Backend>(t: IntTensor<B>) -> Result<Vec<u32>> {
    let data = read(Tensor::<B, 1, Int>::from_primitive(t))?;
    let v = data
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| backend_err("offsets data", e))?;
    Ok(v.into_iter()
        .map(|x| u32::try_from(x).unwrap_or(u32::MAX))
        .collect())
}
