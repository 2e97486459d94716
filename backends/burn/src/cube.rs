//! [`SimbalBackend`] for burn's cubecl backends (`CubeBackend<R, f32, I, BT>`: burn's `Wgpu` and
//! `Cuda` without the `fusion` feature): simbal-cubecl's kernels on burn's own compute client, so
//! they queue on the same stream as burn's kernels. An input tensor's handle is the kernel's
//! buffer (no host round trip, no device copy) when it is contiguous `f32`; anything else is made
//! so by burn's own kernel first. Outputs are device copies of the router's workspace buffers
//! (which the next call reuses), one copy kernel each.
//!
//! With burn's `fusion` feature, burn's `Wgpu`/`Cuda` types are `Fusion<CubeBackend<..>>`, whose
//! tensors are not cubecl handles until fusion resolves them; those take the generic path
//! ([`crate::generic_simbal_backend!`]).

use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::element::{BoolElement, IntElement};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use simbal_core::{Result, SimbalError};
use simbal_cubecl::{CubeclBackend, DevBuf};

use crate::backend::{checked_len, IdxBufOf, SimbalBackend, Spare};

/// `t` as a contiguous tensor of `dtype` (burn's own kernels when it is not one already).
fn contiguous<R: CubeRuntime>(t: &CubeTensor<R>, dtype: DType) -> Result<CubeTensor<R>> {
    if t.dtype != dtype {
        return Err(SimbalError::Backend {
            message: format!(
                "simbal-burn: a {:?} tensor where {dtype:?} is needed",
                t.dtype
            ),
        });
    }
    Ok(if t.is_contiguous() && t.is_contiguous_buffer() {
        t.clone()
    } else {
        burn_cubecl::kernel::into_contiguous(t.clone())
    })
}

/// A contiguous tensor's handle as a simbal buffer (the same memory).
fn as_buf<T: cubecl::CubeElement, R: CubeRuntime>(t: &CubeTensor<R>) -> DevBuf<T> {
    DevBuf::from_handle(t.handle.clone(), t.shape().num_elements())
}

/// A new tensor of `shape` and `dtype` holding a device copy of `v`.
fn tensor_of<T, R: CubeRuntime>(
    engine: &CubeclBackend<R>,
    v: &DevBuf<T>,
    shape: &[usize],
    device: &R::Device,
    dtype: DType,
) -> Result<CubeTensor<R>> {
    checked_len(v.len, shape)?;
    let alias = CubeTensor::new_contiguous(
        engine.client().clone(),
        device.clone(),
        Shape::from(shape.to_vec()),
        v.handle.clone(),
        dtype,
    );
    Ok(alias.copy())
}

impl<R, I, BT> SimbalBackend for CubeBackend<R, f32, I, BT>
where
    R: CubeRuntime,
    I: IntElement,
    BT: BoolElement,
{
    type Engine = CubeclBackend<R>;
    type Lent<'a> = DevBuf<f32>;

    fn engine(device: &R::Device) -> Result<CubeclBackend<R>> {
        Ok(CubeclBackend::from_client(R::client(device)))
    }

    fn lend(_: &CubeclBackend<R>, t: &CubeTensor<R>) -> Result<DevBuf<f32>> {
        Ok(as_buf(&contiguous(t, DType::F32)?))
    }

    fn float_out(
        engine: &CubeclBackend<R>,
        v: &DevBuf<f32>,
        shape: &[usize],
        device: &R::Device,
    ) -> Result<FloatTensor<Self>> {
        tensor_of(engine, v, shape, device, DType::F32)
    }

    /// A fresh device buffer, unfilled: the backward's GEMM overwrites all of it.
    fn grad_buf(engine: &CubeclBackend<R>, len: usize, _: &mut Spare) -> Result<DevBuf<f32>> {
        Ok(DevBuf::empty(engine.client(), len))
    }

    /// The gradient's own buffer as the tensor (no device copy: it is fresh for this call).
    fn grad_out(
        engine: &CubeclBackend<R>,
        buf: DevBuf<f32>,
        shape: &[usize],
        device: &R::Device,
        _: &mut Spare,
    ) -> Result<FloatTensor<Self>> {
        checked_len(buf.len, shape)?;
        Ok(CubeTensor::new_contiguous(
            engine.client().clone(),
            device.clone(),
            Shape::from(shape.to_vec()),
            buf.handle,
            DType::F32,
        ))
    }

    /// Indices are below `2^31`, so their `u32` bits are the same `i32`: a copy, no conversion,
    /// when the int element is 32 bits wide; through the host otherwise.
    fn int_out(
        engine: &CubeclBackend<R>,
        v: &DevBuf<u32>,
        shape: &[usize],
        device: &R::Device,
    ) -> Result<IntTensor<Self>> {
        match I::dtype() {
            d @ (DType::I32 | DType::U32) => tensor_of(engine, v, shape, device, d),
            _ => {
                let len = checked_len(v.len, shape)?;
                let mut host = vec![0u32; len];
                simbal_core::Memory::idx_download(engine, v, &mut host)?;
                let data = burn::tensor::TensorData::new(host, shape.to_vec()).convert::<I>();
                Ok(<Self as burn::tensor::ops::IntTensorOps<Self>>::int_from_data(data, device))
            }
        }
    }

    /// The mask through burn's own bool-to-int kernel, on the device.
    fn mask_in(engine: &CubeclBackend<R>, mask: BoolTensor<Self>) -> Result<IdxBufOf<Self>> {
        let ints = <Self as burn::tensor::ops::BoolTensorOps<Self>>::bool_into_int(
            mask,
            burn::tensor::IntDType::U32,
        );
        Self::idx_in(engine, ints)
    }

    /// A 32-bit int tensor's handle as `u32` (a negative entry reads as a large one, which the
    /// router's checks refuse); wider ints through the host.
    fn idx_in(engine: &CubeclBackend<R>, t: IntTensor<Self>) -> Result<IdxBufOf<Self>> {
        match t.dtype {
            d @ (DType::I32 | DType::U32) => Ok(as_buf(&contiguous(&t, d)?)),
            _ => {
                let host = crate::convert::offsets_data::<Self>(t)?;
                simbal_core::Memory::idx_upload(engine, &host)
            }
        }
    }
}
