//! Each GEMM path on the router step's products, for choosing the dispatch of
//! `kernels::gemm::gemm`.
//!
//! ```sh
//! cargo run --release -p simbal-cubecl --example bench_gemm -- wgpu [iters] [max_shapes]
//! cargo run --release -p simbal-cubecl --features cuda --example bench_gemm -- cuda [iters]
//! ```
//!
//! For each shape (N/D/E) and product (`Z = X R`, `dR = X^T dZ`, `dX = dZ R^T`, the Gram `R^T R`,
//! the SimBal gradient `R G` with beta = 1) it prints the median milliseconds of every path that
//! takes the product (synchronising after each launch), and the path `gemm` picks.

use std::time::Instant;

use cubecl::prelude::{ComputeClient, Runtime};
use simbal_cubecl::kernels::gemm::{gemm_path, gemm_with, CubekStrategy, GemmDims, GemmPath};
use simbal_cubecl::DevBuf;

const SHAPES: [(usize, usize, usize); 4] = [
    (4096, 768, 32),
    (4096, 1536, 32),
    (4096, 4096, 8),
    (2048, 7168, 256),
];

const PATHS: [GemmPath; 5] = [
    GemmPath::Skinny,
    GemmPath::Tiled,
    GemmPath::Cubek(CubekStrategy::SimpleUnit),
    GemmPath::Cubek(CubekStrategy::DoubleUnit),
    GemmPath::Cubek(CubekStrategy::Accelerated),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sync<R: Runtime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).unwrap();
}

fn g(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, beta: f32) -> GemmDims {
    GemmDims {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha: 1.0,
        beta,
    }
}

fn run<R: Runtime>(client: ComputeClient<R>, iters: usize, max_shapes: usize) {
    println!(
        "{:>5} {:>5} {:>4} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | picked",
        "N", "D", "E", "prod", "skinny", "tiled", "cubek-su", "cubek-du", "cubek-tc"
    );
    // Small products first (m/n/k in the N/D/E columns), then the router's.
    let small = [
        (1, 1, 1),
        (7, 33, 1),
        (33, 33, 33),
        (64, 64, 64),
        (128, 128, 128),
    ]
    .map(|(m, n, k)| (m, n, k, vec![("small", g(m, n, k, false, false, 0.0))]));
    let router = SHAPES.iter().take(max_shapes).map(|&(n, d, e)| {
        let prods = vec![
            ("XR", g(n, e, d, false, false, 0.0)),
            ("XtdZ", g(d, e, n, true, false, 0.0)),
            ("dZRt", g(n, d, e, false, true, 0.0)),
            ("RtR", g(e, e, d, true, false, 0.0)),
            ("RG", g(d, e, e, false, false, 1.0)),
        ];
        (n, d, e, prods)
    });
    for (n, d, e, prods) in small.into_iter().chain(router) {
        for (name, p) in prods {
            let fill = |len: usize| {
                let host: Vec<f32> = (0..len).map(|i| ((i % 17) as f32 - 8.0) / 16.0).collect();
                DevBuf::upload(&client, &host)
            };
            let (a, b, c) = (fill(p.m * p.k), fill(p.k * p.n), fill(p.m * p.n));
            let mut cells = Vec::new();
            for path in PATHS {
                if gemm_with(&client, &p, path, &a, &b, &c).is_err() {
                    cells.push(format!("{:>9}", "-"));
                    continue;
                }
                sync(&client);
                let mut t = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let s = Instant::now();
                    gemm_with(&client, &p, path, &a, &b, &c).unwrap();
                    sync(&client);
                    t.push(s.elapsed().as_secs_f64() * 1e3);
                }
                cells.push(format!("{:>9.3}", median(t)));
            }
            println!(
                "{:>5} {:>5} {:>4} {:>6} | {} | {:?}",
                n,
                d,
                e,
                name,
                cells.join(" "),
                gemm_path(&p)
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("wgpu");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let max_shapes: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    match which {
        #[cfg(feature = "cuda")]
        "cuda" => run(
            cubecl::cuda::CudaRuntime::client(&Default::default()),
            iters,
            max_shapes,
        ),
        #[cfg(feature = "wgpu")]
        "wgpu" => run(
            cubecl::wgpu::WgpuRuntime::client(&Default::default()),
            iters,
            max_shapes,
        ),
        other => {
            eprintln!("unknown or disabled runtime {other:?}: build with --features cuda or wgpu");
            std::process::exit(2);
        }
    }
}
