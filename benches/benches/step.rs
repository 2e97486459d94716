//! Criterion benchmarks of the router step, forward-only routing, SimBal alone and the three-GEMM
//! floor, for every backend that runs here. Throughput is reported in FLOPs (GFLOP/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cubecl::wgpu::WgpuRuntime;
use simbal_benches::*;
use simbal_core::{Backend, Reference, SimbalWorkspace, WeightLayout};
use simbal_cubecl::CubeclBackend;
use simbal_dfdx::Dfdx;
use simbal_faer::Faer;
use std::time::Duration;

fn bench_backend<B: Backend + Clone>(c: &mut Criterion, label: &str, b: B, shapes: &[StepShape]) {
    let losses = step_losses();
    for s in shapes {
        let inp = StepInputs::new(&b, s, 0).expect("inputs");
        let mut router = step_router(b.clone(), s).expect("router");
        let mut g = c.benchmark_group(format!("{label}/{}", s.name));
        g.sample_size(10).measurement_time(Duration::from_secs(3));
        g.throughput(Throughput::Elements(step_flops(s) as u64));
        g.bench_function("step", |bch| {
            bch.iter(|| run_step(&mut router, &inp, &losses).expect("step"))
        });
        g.throughput(Throughput::Elements(forward_flops(s) as u64));
        g.bench_function("forward", |bch| {
            bch.iter(|| run_forward(&mut router, &inp).expect("forward"))
        });
        let mut floor = GemmFloor::new(&b, s).expect("floor");
        g.throughput(Throughput::Elements((6 * s.n * s.d * s.e) as u64));
        g.bench_function("gemm-floor", |bch| {
            bch.iter(|| floor.run(&b, &inp, s).expect("floor"))
        });
        g.finish();
    }
}

fn bench_simbal<B: Backend>(
    c: &mut Criterion,
    label: &str,
    b: &B,
    shapes: &[(&'static str, usize, usize)],
) {
    for &(name, d, e) in shapes {
        let s = StepShape {
            name,
            n: 1,
            d,
            e,
            k: 1,
        };
        let inp = StepInputs::new(b, &s, 1).expect("inputs");
        let mut grad = b.zeros(d * e).expect("grad");
        let mut ws = SimbalWorkspace::new(b, WeightLayout::DxE, d, e).expect("ws");
        let mut g = c.benchmark_group(format!("{label}/{name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Elements(simbal_flops(d, e) as u64));
        g.bench_function("simbal", |bch| {
            bch.iter(|| run_simbal(b, &inp.r, &mut grad, &mut ws).expect("simbal"))
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_backend(c, "faer-f32", Faer::<f32>::new(), &STEP_SHAPES);
    bench_simbal(c, "faer-f32", &Faer::<f32>::new(), &SIMBAL_SHAPES);
    bench_backend(c, "dfdx-f32", Dfdx::<f32>::cpu(), &STEP_SHAPES);
    bench_simbal(c, "dfdx-f32", &Dfdx::<f32>::cpu(), &SIMBAL_SHAPES);
    // The scalar reference is only timed on the two small shapes (it is a triple loop).
    bench_backend(
        c,
        "reference-f32",
        Reference::<f32>::new(),
        &STEP_SHAPES[..2],
    );
    bench_simbal(
        c,
        "reference-f32",
        &Reference::<f32>::new(),
        &SIMBAL_SHAPES[..2],
    );
    // wgpu runs wherever an adapter exists; on a machine without a GPU that is lavapipe, a CPU
    // emulation of Vulkan, so only the two small shapes are timed there.
    match CubeclBackend::<WgpuRuntime>::try_new(&Default::default()) {
        Some(gpu) => {
            bench_backend(c, "cubecl-wgpu-f32", gpu.clone(), &STEP_SHAPES[..2]);
            bench_simbal(c, "cubecl-wgpu-f32", &gpu, &SIMBAL_SHAPES[..2]);
        }
        None => eprintln!("cubecl-wgpu: no wgpu adapter found; its benchmarks are skipped"),
    }
}

criterion_group!(step, benches);
criterion_main!(step);
