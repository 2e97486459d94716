//! [`SimbalBackend`] for burn's `NdArray` CPU backend: simbal-faer on the tensors' own memory.
//! A contiguous tensor of the engine's element type is lent as a slice (no copy); any other is
//! copied into one. Outputs are moved into new tensors from one copy out of the router's
//! workspace (the workspace is reused by the next call, so a tensor cannot alias it).

use std::borrow::Borrow;

use burn::tensor::ops::FloatTensor;
use burn_ndarray::{NdArray, NdArrayTensor, SharedArray};
use simbal_core::Result;
use simbal_faer::Faer;

use crate::backend::{checked_len, SimbalBackend, Spare};
use crate::convert::{backend_err, float_host};

/// A host tensor lent as a slice: borrowed when its memory already is one, copied otherwise.
#[derive(Debug)]
pub enum HostLent<'a, T> {
    /// The tensor's own memory.
    Borrowed(&'a [T]),
    /// A row-major copy.
    Copied(Vec<T>),
}

impl<T> Borrow<[T]> for HostLent<'_, T> {
    fn borrow(&self) -> &[T] {
        match self {
            Self::Borrowed(s) => s,
            Self::Copied(v) => v,
        }
    }
}

/// `SimbalBackend` for `NdArray<$t, I, Q>` on `Faer<$t>`, lending the `$variant` storage.
macro_rules! ndarray_on_faer {
    ($t:ty, $variant:ident) => {
        impl<I, Q> SimbalBackend for NdArray<$t, I, Q>
        where
            NdArrayTensor: From<SharedArray<I>>,
            NdArray<$t, I, Q>: burn::tensor::backend::Backend<FloatTensorPrimitive = NdArrayTensor>,
        {
            type Engine = Faer<$t>;
            type Lent<'a> = HostLent<'a, $t>;

            fn engine(_: &Self::Device) -> Result<Faer<$t>> {
                Ok(Faer::new())
            }

            fn lend<'a>(_: &Faer<$t>, t: &'a FloatTensor<Self>) -> Result<HostLent<'a, $t>> {
                if let NdArrayTensor::$variant(storage) = t {
                    if let Some(s) = storage.view().to_slice() {
                        return Ok(HostLent::Borrowed(s));
                    }
                }
                float_host::<Self, $t>(t.clone()).map(HostLent::Copied)
            }

            /// The memory of a gradient handed out before, once its tensor is dropped (no
            /// fresh pages, no fill); zeros otherwise.
            fn grad_buf(_: &Faer<$t>, len: usize, spare: &mut Spare) -> Result<Vec<$t>> {
                let reused = spare
                    .take::<SharedArray<$t>>(|a| a.len() == len && a.is_unique())
                    .and_then(|a| match a.into_owned().into_raw_vec_and_offset() {
                        (v, None | Some(0)) if v.len() == len => Some(v),
                        _ => None,
                    });
                Ok(reused.unwrap_or_else(|| vec![0.0; len]))
            }

            /// The buffer moved into the tensor (no copy); a second handle is kept so its
            /// memory can be reused once the tensor is dropped.
            fn grad_out(
                _: &Faer<$t>,
                buf: Vec<$t>,
                shape: &[usize],
                _: &Self::Device,
                spare: &mut Spare,
            ) -> Result<NdArrayTensor> {
                checked_len(buf.len(), shape)?;
                let arr = SharedArray::<$t>::from_shape_vec(shape.to_vec(), buf)
                    .map_err(|e| backend_err("a gradient's shape", e))?;
                spare.put(arr.clone());
                Ok(<NdArrayTensor as From<SharedArray<$t>>>::from(arr))
            }
        }
    };
}

ndarray_on_faer!(f32, F32);
ndarray_on_faer!(f64, F64);
