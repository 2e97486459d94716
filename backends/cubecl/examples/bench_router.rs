//! Router-step benchmark of the cubecl backend.
//!
//! ```sh
//! cargo run --release -p simbal-cubecl --features cuda --example bench_router -- cuda [iters]
//! cargo run --release -p simbal-cubecl --example bench_router -- wgpu [iters] [shape index]
//! ```
//!
//! For each shape (N/D/E/k) it times a whole `Router` step (forward + backward with SimBal, LBL
//! and z-loss, f32) and each kernel of it alone (synchronising after every launch; `Z+route` is
//! the logits and the rows as the step runs them, one fused launch where `E <= 8`), and prints
//! milliseconds (median over `iters`), the step's kernel launches and device waits
//! (`launch/w`, from `simbal_cubecl::counters`) and the GEMMs' GFLOP/s.

use std::time::Instant;

use cubecl::prelude::Runtime;
use simbal_core::config::{LblConfig, ZLossConfig};
use simbal_core::router::kernels::{
    BackwardRequest, Dispatch, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::simbal::kernels::SimbalResidual;
use simbal_core::{
    orthogonal_init, Backend, Gemm, GemmArgs, LossConfig, Memory, Router, RouterConfig,
    SimBalConfig, WeightLayout,
};
use simbal_cubecl::{CubeclBackend, DevBuf};

const SHAPES: [(usize, usize, usize, usize); 4] = [
    (4096, 768, 32, 4),
    (4096, 1536, 32, 4),
    (4096, 4096, 8, 2),
    (2048, 7168, 256, 8),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median milliseconds of `f` followed by a device sync.
fn time<R: Runtime>(be: &CubeclBackend<R>, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    be.sync().unwrap();
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let s = Instant::now();
        f();
        be.sync().unwrap();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    median(t)
}

fn lcg(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

fn run<R: Runtime>(be: CubeclBackend<R>, iters: usize, only: Option<usize>) {
    println!("backend {}", be.name());
    println!(
        "{:>5} {:>5} {:>4} {:>2} | {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} | {:>8} {:>8} {:>8}",
        "N", "D", "E", "k", "step ms", "launch/w", "Z=XR", "route", "Z+route", "dispatch", "bwd", "dX", "dR", "simbal", "XR GF/s", "dX GF/s", "dR GF/s"
    );
    for (i, &(n, d, e, k)) in SHAPES.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let x = be.upload(&lcg(1, n * d, 1.0)).unwrap();
        let r_host: Vec<f32> = orthogonal_init(WeightLayout::DxE, d, e, 7).unwrap();
        let r = be.upload(&r_host).unwrap();
        let dw = be.upload(&lcg(3, n * k, 0.01)).unwrap();
        let mut cfg = RouterConfig::new(e, k).with_check_finite(false);
        if e == 256 {
            cfg = cfg.with_groups(8, 4); // DeepSeek-V3 style
        }
        let losses = LossConfig::none()
            .with_simbal(SimBalConfig::default())
            .with_lbl(LblConfig::default())
            .with_z_loss(ZLossConfig::default());
        let mut router = Router::new(be.clone(), cfg).unwrap();
        let step = time(&be, iters, || {
            let mut pass = router.forward(&x, &r, None).unwrap();
            pass.backward(&dw, &losses, None).unwrap();
        });
        // What one step launches and how often it waits for the device (its one read).
        let before = simbal_cubecl::counters();
        let mut pass = router.forward(&x, &r, None).unwrap();
        pass.backward(&dw, &losses, None).unwrap();
        let per_step = simbal_cubecl::counters() - before;

        // Kernels alone, on the router's buffers.
        let mut z = be.zeros(n * e).unwrap();
        let mut p = be.zeros(n * e).unwrap();
        let mut idx = be.idx_zeros(n * k).unwrap();
        let mut gates = be.zeros(n * k).unwrap();
        let mut dropped = be.idx_zeros(n * k).unwrap();
        let mut counts = be.idx_zeros(e).unwrap();
        let mut order = be.idx_zeros(n * k).unwrap();
        let mut offsets = be.idx_zeros(e + 1).unwrap();
        let mut dz = be.zeros(n * e).unwrap();
        let mut dx = be.zeros(n * d).unwrap();
        let mut dr = be.zeros(d * e).unwrap();
        let mut gram = be.zeros(e * e).unwrap();
        // One GEMM through core's O(1) check, as the router calls it.
        let gemm = |g: Gemm, a: &DevBuf<f32>, b: &DevBuf<f32>, c: &mut DevBuf<f32>| {
            be.gemm(GemmArgs { gemm: g, a, b, c }.check(&be).unwrap())
                .unwrap()
        };
        let t_z = time(&be, iters, || gemm(Gemm::new(n, e, d), &x, &r, &mut z));
        let mut route = |logits| {
            let a = Route {
                cfg: &cfg,
                n,
                logits,
                bias: None,
                z: &mut z,
                p: &mut p,
                idx: &mut idx,
                gates: &mut gates,
                plain: None,
                request: RouteRequest::default(),
            };
            be.route(a.check(&be).unwrap()).unwrap();
        };
        let t_route = time(&be, iters, || route(Logits::Given));
        // The logits and the rows as the step runs them (one launch where `E <= 8`).
        let t_fused = time(&be, iters, || {
            route(Logits::Tokens {
                gemm: Gemm::new(n, e, d),
                x: &x,
                r: &r,
            })
        });
        let t_disp = time(&be, iters, || {
            let a = Dispatch {
                cfg: &cfg,
                n,
                idx: &idx,
                gates: &mut gates,
                dropped: &mut dropped,
                counts: &mut counts,
                order: &mut order,
                offsets: &mut offsets,
            };
            be.dispatch(a.check(&be).unwrap()).unwrap();
        });
        let t_bwd = time(&be, iters, || {
            let a = RouterBackward {
                cfg: &cfg,
                n,
                z: &z,
                p: &p,
                idx: &idx,
                gates: &gates,
                dropped: &dropped,
                dw: &dw,
                groups: simbal_core::tokens::Groups::whole(n),
                lbl: None,
                z_coef: 1e-3,
                dz: &mut dz,
                request: BackwardRequest::default(),
            };
            be.router_backward(a.check(&be).unwrap()).unwrap();
        });
        let t_dx = time(&be, iters, || {
            gemm(Gemm::new(n, d, e).tb(), &dz, &r, &mut dx)
        });
        let t_dr = time(&be, iters, || {
            gemm(Gemm::new(d, e, n).ta(), &x, &dz, &mut dr)
        });
        let sc = SimBalConfig::default();
        let t_sb = time(&be, iters, || {
            gemm(Gemm::new(e, e, d).ta(), &r, &r, &mut gram);
            let a = SimbalResidual {
                cfg: &sc,
                e,
                gram: &mut gram,
            };
            be.simbal_residual(a.check(&be).unwrap()).unwrap();
            gemm(Gemm::new(d, e, e).beta(1.0), &r, &gram, &mut dr);
        });
        let gf = |ms: f64| 2.0 * (n * d * e) as f64 / (ms * 1e-3) / 1e9;
        println!(
            "{:>5} {:>5} {:>4} {:>2} | {:>8.3} {:>8} | {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} | {:>8.0} {:>8.0} {:>8.0}",
            n, d, e, k, step, format!("{}/{}", per_step.launches, per_step.waits), t_z, t_route, t_fused, t_disp, t_bwd, t_dx, t_dr, t_sb, gf(t_z), gf(t_dx), gf(t_dr)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("wgpu");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let only: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    match which {
        #[cfg(feature = "cuda")]
        "cuda" => run(
            CubeclBackend::<cubecl::cuda::CudaRuntime>::new(&Default::default()),
            iters,
            only,
        ),
        #[cfg(feature = "wgpu")]
        "wgpu" => run(
            CubeclBackend::<cubecl::wgpu::WgpuRuntime>::new(&Default::default()),
            iters,
            only,
        ),
        other => {
            eprintln!("unknown or disabled runtime {other:?}: build with --features cuda or wgpu");
            std::process::exit(2);
        }
    }
}
