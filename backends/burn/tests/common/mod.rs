//! What the simbal-burn API tests share: tensors from host data (in the backend's own element
//! type, not the device default), host reads, random inputs.
#![allow(dead_code)]

pub mod agree;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData, TensorPrimitive};
use simbal_core::Rng;

/// A float tensor of `shape` from `v`, in `B`'s float element type.
pub fn float<B: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    let data = TensorData::new(v.to_vec(), shape).convert::<B::FloatElem>();
    Tensor::from_primitive(TensorPrimitive::Float(B::float_from_data(
        data,
        &Default::default(),
    )))
}

/// A bool tensor from `v`.
pub fn bools<B: Backend>(v: &[bool]) -> Tensor<B, 1, Bool> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

/// An int tensor from `v`.
pub fn ints<B: Backend>(v: &[i64]) -> Tensor<B, 1, Int> {
    let data = TensorData::new(v.to_vec(), [v.len()]).convert::<B::IntElem>();
    Tensor::from_primitive(B::int_from_data(data, &Default::default()))
}

/// A float tensor's elements as `f64`.
pub fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f64> {
    t.to_data().convert::<f64>().into_vec::<f64>().unwrap()
}

/// An int tensor's elements as `i64`.
pub fn host_int<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> Vec<i64> {
    t.to_data().convert::<i64>().into_vec::<i64>().unwrap()
}

/// `len` normal draws times `std`.
pub fn normal(rng: &mut Rng, len: usize, std: f64) -> Vec<f64> {
    (0..len).map(|_| rng.normal() * std).collect()
}

/// Largest `|a - b| / max(1, |b|)`.
pub fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}
