//! simbal-burn on burn's wgpu backend (lavapipe in CI): `MoeRouter` on `Autodiff<Wgpu>` against
//! core's reference router (f32 tolerance, every convention of `common/agree.rs`), and the
//! zero-copy path: a contiguous tensor's handle is the buffer simbal-cubecl's kernels get, on
//! the client burn's own kernels use. Without an adapter each test prints a note and passes,
//! unless `CI` is set.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Autodiff, Wgpu};
use burn::tensor::ops::FloatTensor;
use simbal_burn::SimbalBackend;
use simbal_cubecl::CubeclBackend;

fn adapter() -> bool {
    let ok = CubeclBackend::<cubecl::wgpu::WgpuRuntime>::try_new(&Default::default()).is_some();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "no wgpu adapter under CI");
        eprintln!("no wgpu adapter: skipped");
    }
    ok
}

#[test]
fn agrees_with_the_reference() {
    if adapter() {
        common::agree::agree::<Autodiff<Wgpu>>(1e-4);
    }
}

#[test]
fn tensors_are_lent_as_their_own_handles() {
    if !adapter() {
        return;
    }
    let engine = <Wgpu as SimbalBackend>::engine(&Default::default()).unwrap();
    let t = common::float::<Wgpu, 2>(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    let prim: FloatTensor<Wgpu> = t.clone().into_primitive().tensor();
    // A kernel writing into the lent buffer writes into the tensor burn holds: the same memory.
    let c = common::float::<Wgpu, 2>(&[0.0; 4], [2, 2]);
    let c_prim: FloatTensor<Wgpu> = c.clone().into_primitive().tensor();
    let mut c_buf = <Wgpu as SimbalBackend>::lend(&engine, &c_prim).unwrap();
    let a = <Wgpu as SimbalBackend>::lend(&engine, &prim).unwrap();
    let b = simbal_core::Memory::upload(&engine, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
    let args = simbal_core::GemmArgs {
        gemm: simbal_core::Gemm::new(2, 2, 3),
        a: &a,
        b: &b,
        c: &mut c_buf,
    };
    simbal_core::Backend::gemm(&engine, args.check(&engine).unwrap()).unwrap();
    assert_eq!(common::host(&c), [4.0, 5.0, 10.0, 11.0]);
    let buf = a;
    let mut host = vec![0.0f32; 6];
    simbal_core::Memory::download(&engine, &buf, &mut host).unwrap();
    assert_eq!(host, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // A transposed tensor goes through burn's contiguous kernel first (row-major values).
    let tt: FloatTensor<Wgpu> = t.transpose().into_primitive().tensor();
    let buf = <Wgpu as SimbalBackend>::lend(&engine, &tt).unwrap();
    simbal_core::Memory::download(&engine, &buf, &mut host).unwrap();
    assert_eq!(host, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
}
