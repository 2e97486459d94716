//! `MoeRouter` on `Autodiff<NdArray>` in f64 and f32 against core's reference router: the
//! routing tensors, the loss values and tensors, and `X`'s and `R`'s gradients from
//! `loss.backward()` at the SPEC's tolerance, for every convention (see `common/agree.rs`).

mod common;

use burn::backend::{Autodiff, NdArray};
use common::agree::agree;

#[test]
fn agrees_with_the_reference_f64() {
    agree::<Autodiff<NdArray<f64>>>(1e-10);
}

#[test]
fn agrees_with_the_reference_f32() {
    agree::<Autodiff<NdArray<f32>>>(1e-4);
}

#[cfg(feature = "flex")]
#[test]
fn agrees_with_the_reference_on_flex() {
    agree::<Autodiff<burn::backend::Flex>>(1e-4);
}
