//! [`SimbalBackend`] for burn's `Flex` CPU backend: simbal-faer on the tensors' own memory, as for
//! `NdArray` (a contiguous `f32` tensor lent as a slice, anything else copied into one).

use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use simbal_core::Result;
use simbal_faer::Faer;

use crate::backend::SimbalBackend;
use crate::convert::float_host;
use crate::ndarray::HostLent;

impl SimbalBackend for Flex {
    type Engine = Faer<f32>;
    type Lent<'a> = HostLent<'a, f32>;

    fn engine(_: &Self::Device) -> Result<Faer<f32>> {
        Ok(Faer::new())
    }

    fn lend<'a>(_: &Faer<f32>, t: &'a FloatTensor<Self>) -> Result<HostLent<'a, f32>> {
        match t.as_slice::<f32>() {
            Some(s) => Ok(HostLent::Borrowed(s)),
            None => float_host::<Self, f32>(t.clone()).map(HostLent::Copied),
        }
    }
}
