//! simbal's side of the PyTorch/JAX comparison: times the router step, forward-only routing and
//! SimBal alone on the faer backend (f32) and writes the anchors' JSON schema. `step-burn` is the
//! same step through simbal-burn on burn's CPU backend (`Autodiff<NdArray<f32>>`), timed in the
//! same rounds so its ratio to `step` is burn's overhead.
//!
//! `cargo run --release -p simbal-benches --bin compare -- --threads 2 --out target/compare/simbal.json`

use simbal_benches::*;
use simbal_core::{Memory, SimbalWorkspace, WeightLayout};
use simbal_faer::Faer;
use std::time::Instant;

struct Args {
    threads: usize,
    warmup: usize,
    iters: usize,
    shapes: Vec<String>,
    out: Option<String>,
    inputs: Option<std::path::PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        warmup: 3,
        iters: 20,
        shapes: Vec::new(),
        out: None,
        inputs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--warmup" => a.warmup = val()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--iters" => a.iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--shapes" => a.shapes = val()?.split(',').map(str::to_owned).collect(),
            "--out" => a.out = Some(val()?),
            "--inputs" => a.inputs = Some(val()?.into()),
            "--help" | "-h" => {
                println!("compare [--threads T] [--warmup W] [--iters I] [--shapes a,b] [--out FILE.json] [--inputs DIR]");
                println!(
                    "  --inputs DIR: time the anchors' inputs (benches/anchors/dump_inputs.py DIR)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.iters = a.iters.max(1);
    Ok(a)
}

/// The shape's inputs: the anchors' (from `--inputs`), else simbal's own seeded ones (same
/// distributions, other numbers).
fn inputs(
    b: &Faer<f32>,
    s: &StepShape,
    args: &Args,
    seed: u64,
) -> simbal_core::Result<StepInputs<Faer<f32>>> {
    match &args.inputs {
        Some(dir) => {
            StepInputs::from_dir(b, s, dir).map_err(|e| simbal_core::SimbalError::Backend {
                message: format!("reading the anchors' inputs: {e}"),
            })
        }
        None => StepInputs::new(b, s, seed),
    }
}

/// A timed op: its name and the call.
type NamedOp<'n, 'f> = (&'n str, Box<dyn FnMut() + 'f>);

/// Median and minimum seconds of each op over `iters` rounds (after `warmup` rounds), where a
/// round calls every op once in turn.
fn time_interleaved<'n>(
    warmup: usize,
    iters: usize,
    ops: &mut [NamedOp<'n, '_>],
) -> Vec<(&'n str, (f64, f64))> {
    for _ in 0..warmup {
        for (_, f) in ops.iter_mut() {
            f();
        }
    }
    let mut t = vec![Vec::with_capacity(iters); ops.len()];
    for _ in 0..iters {
        for ((_, f), ti) in ops.iter_mut().zip(t.iter_mut()) {
            let s = Instant::now();
            f();
            ti.push(s.elapsed().as_secs_f64());
        }
    }
    ops.iter()
        .zip(t)
        .map(|((name, _), mut ti)| {
            ti.sort_by(|a, b| a.total_cmp(b));
            (*name, (ti[ti.len() / 2], ti[0]))
        })
        .collect()
}

fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
    {
        eprintln!("compare: cannot size the thread pool: {e}");
    }
    // Run on a worker of the pool, as a training loop on rayon does: parallel regions then
    // start without handing the calling thread over to the pool and back.
    rayon::scope(|_| body(&args));
}

fn body(args: &Args) {
    let want = |name: &str| args.shapes.is_empty() || args.shapes.iter().any(|s| s == name);
    let mut rows = Vec::new();
    let b = Faer::<f32>::new();
    let losses = step_losses();
    for s in STEP_SHAPES.iter().filter(|s| want(s.name)) {
        let mut run = || -> simbal_core::Result<()> {
            let inp = inputs(&b, s, args, 0)?;
            let mut router = step_router(b, s)?;
            let mut router2 = step_router(b, s)?;
            let mut router3 = step_router(b, s)?;
            // The default step with a token mask: every eighth token padding.
            let mask: Vec<u32> = (0..s.n).map(|t| u32::from(t % 8 != 7)).collect();
            let mut floor = GemmFloor::new(&b, s)?;
            let x_host: &[f32] = &inp.x; // faer buffers are host vectors
            let mut bytes = ByteFloor::<f32>::new(s);
            // The same step through simbal-burn on Autodiff<NdArray<f32>>, checked once against
            // the direct step's gradients.
            let burn = BurnStep::<BurnCpu>::new(s, &inp.x, &inp.r, &inp.dw)?;
            check_burn(&burn, &mut router, &inp, &losses, s)?;
            let flex = BurnStep::<BurnFlex>::new(s, &inp.x, &inp.r, &inp.dw)?;
            check_burn(&flex, &mut router, &inp, &losses, s)?;
            // The ops take turns, one call each per round, so a burst of load from a
            // neighbour hits all of them alike and their ratios stay meaningful.
            let mut ops: [NamedOp<'_, '_>; 7] = [
                (
                    "step",
                    Box::new(|| {
                        run_step(&mut router, &inp, &losses).expect("step");
                    }),
                ),
                (
                    "step-masked",
                    Box::new(|| {
                        run_step_masked(&mut router3, &inp, &mask[..], &losses)
                            .expect("masked step");
                    }),
                ),
                (
                    "step-burn",
                    Box::new(|| {
                        std::hint::black_box(burn.run(&losses).expect("burn step"));
                    }),
                ),
                (
                    "step-burn-flex",
                    Box::new(|| {
                        std::hint::black_box(flex.run(&losses).expect("burn step on flex"));
                    }),
                ),
                (
                    "forward",
                    Box::new(|| {
                        run_forward(&mut router2, &inp).expect("forward");
                    }),
                ),
                (
                    "gemm-floor",
                    Box::new(|| floor.run(&b, &inp, s).expect("gemm floor")),
                ),
                (
                    "bytes-floor",
                    Box::new(|| {
                        std::hint::black_box(bytes.run(x_host));
                    }),
                ),
            ];
            for (op, (med, min)) in time_interleaved(args.warmup, args.iters, &mut ops) {
                rows.push(row(s.name, s.n, s.d, s.e, s.k, op, med, min, args.iters));
            }
            eprintln!("compare: {} done", s.name);
            Ok(())
        };
        if let Err(e) = run() {
            eprintln!("compare: {}: {e}", s.name);
            std::process::exit(1);
        }
    }
    for (name, d, e) in SIMBAL_SHAPES.iter().filter(|s| want(s.0)) {
        let mut run = || -> simbal_core::Result<()> {
            // SimBal alone: only R (n = 0 tokens).
            let s = StepShape {
                name,
                n: 0,
                d: *d,
                e: *e,
                k: 0,
            };
            let inp = inputs(&b, &s, args, 1)?;
            let mut grad = b.zeros(d * e)?;
            let mut ws = SimbalWorkspace::new(&b, WeightLayout::DxE, *d, *e)?;
            let mut ops: [NamedOp<'_, '_>; 1] = [(
                "simbal",
                Box::new(|| {
                    run_simbal(&b, &inp.r, &mut grad, &mut ws).expect("simbal");
                }),
            )];
            for (op, (med, min)) in time_interleaved(args.warmup, args.iters, &mut ops) {
                rows.push(row(name, 0, *d, *e, 0, op, med, min, args.iters));
            }
            Ok(())
        };
        if let Err(e) = run() {
            eprintln!("compare: {name}: {e}");
            std::process::exit(1);
        }
    }
    let json = format!(
        "{{\"impl\": \"simbal-faer\", \"version\": \"{}\", \"threads\": {}, \"machine\": \"{}\", \"results\": [\n{}\n]}}\n",
        env!("CARGO_PKG_VERSION"),
        args.threads,
        machine().replace('"', "'"),
        rows.join(",\n")
    );
    match &args.out {
        Some(path) => {
            if let Some(dir) = std::path::Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(path, &json) {
                eprintln!("compare: cannot write {path}: {e}");
                std::process::exit(1);
            }
        }
        None => print!("{json}"),
    }
}

/// The burn step's `dX` and `dR` against the direct step's: the same engine on the same numbers,
/// so they agree to rounding (a different result would mean the two do different work).
fn check_burn<B: BurnStepBackend>(
    burn: &BurnStep<B>,
    router: &mut simbal_core::Router<Faer<f32>>,
    inp: &StepInputs<Faer<f32>>,
    losses: &simbal_core::LossConfig,
    s: &StepShape,
) -> simbal_core::Result<()> {
    let (bdx, bdr) = burn.run(losses)?;
    let host = |t: burn::tensor::Tensor<_, 2>| -> simbal_core::Result<Vec<f32>> {
        t.into_data()
            .into_vec::<f32>()
            .map_err(|e| simbal_core::SimbalError::Backend {
                message: format!("burn gradient data: {e:?}"),
            })
    };
    let (bdx, bdr) = (host(bdx)?, host(bdr)?);
    let mut pass = router.forward(&inp.x[..], &inp.r[..], None)?;
    let g = pass.backward(&inp.dw[..], losses, None)?;
    let (ex, er) = (max_abs_diff(&bdx, g.dx), max_abs_diff(&bdr, g.dr));
    let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let (sx, sr) = (scale(g.dx), scale(g.dr));
    eprintln!(
        "compare: {}: burn vs direct gradients: max |ddX| {ex:.3e} (max |dX| {sx:.3e}), max |ddR| {er:.3e} (max |dR| {sr:.3e})",
        s.name
    );
    if ex > 1e-4 * sx.max(1e-30) || er > 1e-4 * sr.max(1e-30) {
        return Err(simbal_core::SimbalError::Backend {
            message: format!(
                "{}: the burn step's gradients differ from the direct step's",
                s.name
            ),
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn row(
    shape: &str,
    n: usize,
    d: usize,
    e: usize,
    k: usize,
    op: &str,
    med: f64,
    min: f64,
    iters: usize,
) -> String {
    format!(
        "  {{\"shape\": \"{shape}\", \"n\": {n}, \"d\": {d}, \"e\": {e}, \"k\": {k}, \"op\": \"{op}\", \"median_s\": {med:.9}, \"min_s\": {min:.9}, \"iters\": {iters}}}"
    )
}
