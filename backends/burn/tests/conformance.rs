//! The shared conformance suite (SPEC.md) on simbal-burn's engines over burn tensors:
//! the generic path ([`BurnTensors`]: buffers are burn tensors, GEMMs are burn matmuls, the rest
//! staged) on burn's CPU backend in f64 and f32, and on what `NdArray`'s `SimbalBackend` hands
//! out (`<NdArray<_> as SimbalBackend>::engine`). The wgpu instances are in `conformance_wgpu.rs`.

use burn::backend::NdArray;
use simbal_burn::{BurnTensors, SimbalBackend};

simbal_conformance::conformance_suite!(burn_ndarray_f64, || Some(
    BurnTensors::<NdArray<f64>>::new(&Default::default())
));
simbal_conformance::conformance_suite!(burn_ndarray_f32, || Some(
    BurnTensors::<NdArray<f32>>::new(&Default::default())
));
simbal_conformance::conformance_suite!(ndarray_engine_f32, || {
    <NdArray<f32> as SimbalBackend>::engine(&Default::default()).ok()
});
