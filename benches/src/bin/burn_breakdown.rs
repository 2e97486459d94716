//! Where the `step-burn` row of `compare` spends its time beyond the direct faer `step`: the
//! pieces of the burn step timed interleaved with the direct step on the same inputs.
//!
//! `cargo run --release -p simbal-benches --bin burn_breakdown -- [--threads T] [--warmup W]
//! [--iters I] [--shapes a,b] [--only op,op]`
//!
//! Rows (median and minimum ms, each also as a fraction of the first row's, the direct step unless
//! `--only` leaves it out):
//! - `step`: the direct faer step (forward, backward);
//! - `step-burn`: the whole burn step (`compare`'s row);
//! - `burn-fwd`: `MoeRouter::forward` on `Autodiff<NdArray<f32>>` alone (graph dropped);
//! - `faer-fwd`: the direct router forward alone;
//! - `faer-fwd+values`: the direct forward then `Pass::loss_values` (what the burn forward adds
//!   to compute the loss tensors' values);
//! - `faer-bwd`: the direct backward alone (`resume` then `backward` after one forward);
//! - `out-dx`, `out-dr`: `float_out` of a `dX`, `dR`-sized buffer into a new `NdArray` tensor
//!   (the copies out of the router workspace at the burn backward), dropped after;
//! - `out-fwd`: the forward's copies into new tensors (gates, scores, the five index
//!   tensors), dropped after;
//! - `to-vec-dx`: the same copy into fresh memory without zeroing it first (`to_vec`);
//! - `copy-dx-reuse`: the same copy into a buffer kept from the last call (no fresh memory);
//! - `fresh-dx`: a fresh zeroed `dX`-sized `Vec` written once (the page faults of new memory
//!   alone, without the copy).

use burn::backend::NdArray;
use simbal_benches::*;
use simbal_burn::SimbalBackend;
use simbal_core::Memory;
use simbal_faer::Faer;
use std::time::Instant;

type Op<'f> = (&'static str, Box<dyn FnMut() + 'f>);

fn main() {
    let mut threads = 2;
    let mut warmup = 3;
    let mut iters = 20;
    let mut shapes: Vec<String> = Vec::new();
    let mut only: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let v = it.next().unwrap_or_default();
        match f.as_str() {
            "--threads" => threads = v.parse().expect("--threads"),
            "--warmup" => warmup = v.parse().expect("--warmup"),
            "--iters" => iters = v.parse::<usize>().expect("--iters").max(1),
            "--shapes" => shapes = v.split(',').map(str::to_owned).collect(),
            "--only" => only = v.split(',').map(str::to_owned).collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    rayon::scope(|_| body(warmup, iters, &shapes, &only));
}

fn body(warmup: usize, iters: usize, shapes: &[String], only: &[String]) {
    let b = Faer::<f32>::new();
    let losses = step_losses();
    let dev = Default::default();
    type Nd = NdArray<f32>;
    for s in STEP_SHAPES
        .iter()
        .filter(|s| shapes.is_empty() || shapes.iter().any(|n| n == s.name))
    {
        let inp = StepInputs::new(&b, s, 0).expect("inputs");
        let (x, r, dw) = (&inp.x[..], &inp.r[..], &inp.dw[..]);
        let mut direct = step_router(b, s).expect("router");
        let mut fwd = step_router(b, s).expect("router");
        let mut fwdv = step_router(b, s).expect("router");
        let mut bwd = step_router(b, s).expect("router");
        bwd.forward(x, r, None).expect("forward");
        let mut outs = step_router(b, s).expect("router");
        outs.forward(x, r, None).expect("forward");
        let burn = BurnStep::<BurnCpu>::new(s, x, r, dw).expect("burn step");
        let router =
            simbal_burn::MoeRouter::<BurnCpu>::new(simbal_core::RouterConfig::new(s.e, s.k), &dev)
                .expect("router");
        let (bx, br) = {
            use burn::tensor::{Tensor, TensorData};
            let t = |v: &[f32], sh: [usize; 2]| {
                Tensor::<BurnCpu, 2>::from_data(TensorData::new(v.to_vec(), sh), &dev)
                    .require_grad()
            };
            (t(x, [s.n, s.d]), t(r, [s.d, s.e]))
        };
        let dxbuf = vec![0.5f32; s.n * s.d];
        let drbuf = vec![0.5f32; s.d * s.e];
        let mut reuse = vec![0f32; s.n * s.d];
        let mut ops: Vec<Op<'_>> = vec![
            (
                "step",
                Box::new(|| {
                    run_step(&mut direct, &inp, &losses).expect("step");
                }),
            ),
            (
                "step-burn",
                Box::new(|| {
                    std::hint::black_box(burn.run(&losses).expect("burn"));
                }),
            ),
            (
                "burn-fwd",
                Box::new(|| {
                    let out = router
                        .forward(bx.clone(), br.clone(), &losses)
                        .expect("burn fwd");
                    std::hint::black_box(out);
                }),
            ),
            (
                "faer-fwd",
                Box::new(|| {
                    fwd.forward(x, r, None).expect("fwd");
                }),
            ),
            (
                "faer-fwd+values",
                Box::new(|| {
                    let mut p = fwdv.forward(x, r, None).expect("fwd");
                    std::hint::black_box(p.loss_values(&losses, None).expect("values"));
                }),
            ),
            (
                "faer-bwd",
                Box::new(|| {
                    let mut p = bwd.resume(x, r).expect("resume");
                    std::hint::black_box(p.backward(dw, &losses, None).expect("bwd").losses);
                }),
            ),
            (
                "out-dx",
                Box::new(|| {
                    std::hint::black_box(
                        Nd::float_out(&b, &dxbuf[..], &[s.n, s.d], &dev).expect("out"),
                    );
                }),
            ),
            (
                "out-dr",
                Box::new(|| {
                    std::hint::black_box(
                        Nd::float_out(&b, &drbuf[..], &[s.d, s.e], &dev).expect("out"),
                    );
                }),
            ),
            (
                "out-fwd",
                Box::new(|| {
                    let p = outs.resume(x, r).expect("resume");
                    let (n, e, k) = (s.n, s.e, s.k);
                    let f = |v: &[f32], sh: &[usize]| Nd::float_out(&b, v, sh, &dev).expect("o");
                    let i = |v: &[u32], sh: &[usize]| Nd::int_out(&b, v, sh, &dev).expect("o");
                    std::hint::black_box((
                        f(p.gates(), &[n * k]),
                        f(p.scores(), &[n, e]),
                        i(p.indices(), &[n, k]),
                        i(p.plain_indices(), &[n, k]),
                        i(p.dropped(), &[n, k]),
                        i(p.counts(), &[e]),
                        i(p.dispatch_order(), &[n * k]),
                        i(p.dispatch_offsets(), &[e + 1]),
                    ));
                }),
            ),
            (
                "to-vec-dx",
                Box::new(|| {
                    std::hint::black_box(dxbuf.to_vec());
                }),
            ),
            (
                "copy-dx-reuse",
                Box::new(|| {
                    reuse.copy_from_slice(&dxbuf);
                    std::hint::black_box(&reuse);
                }),
            ),
            (
                "fresh-dx",
                Box::new(|| {
                    let mut v = vec![0f32; s.n * s.d];
                    v.iter_mut().step_by(1024).for_each(|e| *e = 1.0);
                    std::hint::black_box(&v);
                }),
            ),
        ];
        // `--only a,b`: time just these rows (to profile one, e.g. under `perf record`).
        ops.retain(|(name, _)| only.is_empty() || only.iter().any(|o| o == name));
        for _ in 0..warmup {
            ops.iter_mut().for_each(|(_, f)| f());
        }
        let mut t = vec![Vec::new(); ops.len()];
        for _ in 0..iters {
            for ((_, f), ti) in ops.iter_mut().zip(t.iter_mut()) {
                let st = Instant::now();
                f();
                ti.push(st.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (med, min): (Vec<f64>, Vec<f64>) = t
            .into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                (v[v.len() / 2], v[0])
            })
            .unzip();
        println!(
            "{} ({}x{}x{} k{}), median of {iters}:",
            s.name, s.n, s.d, s.e, s.k
        );
        println!(
            "  {:<16} {:>9} {:>11}  {:>9} {:>11}",
            "", "median ms", "x step", "min ms", "x step"
        );
        for (((name, _), m), mn) in ops.iter().zip(&med).zip(&min) {
            println!(
                "  {name:<16} {m:>9.3} {:>11.3}  {mn:>9.3} {:>11.3}",
                m / med[0],
                mn / min[0]
            );
        }
        let _ = b.len(&dxbuf[..]);
    }
}
