//! Data-parallel training over MPI equals single-process training on the concatenated batch.
//!
//! Run under `mpirun -n R` (any `R >= 1`; `mpi/run-tests.sh` runs 2 and 3). Every rank holds
//! the same fixed global batch of `N` tokens (a token mask pads some out) and trains its shard
//! (`N / R` tokens, uneven when `R` does not divide `N`) of a small MoE model: router weight
//! `R` (`D x E`) with SimBal, a global-batch LBL from the all-reduced statistics, the
//! aux-loss-free bias update from them, and one linear readout per expert; the squared error
//! is averaged over the global batch's valid tokens. Per step, two collectives: the routing
//! statistics ([`StatsAllReduce`]) and the packed gradients plus loss values
//! ([`SumAllReduce`]). SimBal's gradient is added after the gradient all-reduce, on every
//! rank, from the replicated weight: no communication.
//!
//! Every rank then trains the same model on the whole batch in one process (micro-batch LBL,
//! SimBal inside the router backward) and checks, per step, the merged statistics (counts
//! exact, score sums to 1e-12 relative) and the loss values, and at the end the parameters
//! (1e-12 relative; the biases exactly). Exit status 0 when every rank agrees.

use mpi::collective::SystemOperation;
use mpi::traits::*;
use simbal_core::{
    simbal_loss, update_bias, Batch, BiasUpdateConfig, LblConfig, LblLevel, LossConfig, Reference,
    Router, RouterConfig, RoutingStats, SimBalConfig, SimbalWorkspace, WeightLayout,
};
use simbal_mpi::{MpiStatsError, StatsAllReduce, SumAllReduce};
use std::error::Error;

type Be = Reference<f64>;
type Res<T> = Result<T, Box<dyn Error>>;

/// Tokens of the global batch, width, experts, experts per token, steps.
const N: usize = 31;
const D: usize = 6;
const E: usize = 4;
const K: usize = 2;
const STEPS: usize = 6;
const LR: f64 = 0.2;
const TOL: f64 = 1e-12;

/// Deterministic pseudo-random values in `[-1, 1)`.
fn lcg(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Tokens, mask and targets of a set of tokens.
#[derive(Clone)]
struct Data {
    x: Vec<f64>,
    mask: Vec<u32>,
    target: Vec<f64>,
}

impl Data {
    fn global() -> Self {
        let x = lcg(1, N * D);
        let mask = (0..N).map(|t| u32::from(t % 7 != 3)).collect();
        let target = lcg(2, N);
        Self { x, mask, target }
    }
    fn shard(&self, lo: usize, hi: usize) -> Self {
        Self {
            x: self.x[lo * D..hi * D].to_vec(),
            mask: self.mask[lo..hi].to_vec(),
            target: self.target[lo..hi].to_vec(),
        }
    }
}

/// Parameters: router weight (`D x E`), expert readouts (`E x D`), selection bias (`E`).
#[derive(Clone)]
struct Model {
    r: Vec<f64>,
    w: Vec<f64>,
    bias: Vec<f64>,
}

impl Model {
    fn init() -> Self {
        Self {
            r: lcg(3, D * E).iter().map(|v| 0.8 * v).collect(),
            w: lcg(4, E * D),
            bias: vec![0.0; E],
        }
    }
}

/// How a step sees the other shards: not at all (one process) or through MPI.
enum Comm<'c, C: Communicator> {
    Local,
    Mpi {
        comm: &'c C,
        stats: StatsAllReduce,
        grads: SumAllReduce,
    },
}

/// One step's loss values (summed over the shards) and the global statistics.
struct StepLog {
    task: f64,
    lbl: f64,
    simbal: f64,
    stats: RoutingStats,
}

const DE: usize = D * E;
const GRADS: usize = 2 * DE + 2; // dR, dW, task loss, LBL

/// Reusable per-trainer state: router, SimBal workspace, statistics, buffers.
struct Trainer {
    router: Router<Be>,
    simbal_ws: SimbalWorkspace<Be>,
    stats: RoutingStats,
    grad: Vec<f64>,
    dw: Vec<f64>,
    u: Vec<f64>,
}

impl Trainer {
    fn new(n: usize) -> Res<Self> {
        let be = Be::new();
        Ok(Self {
            simbal_ws: SimbalWorkspace::new(&be, WeightLayout::DxE, D, E)?,
            router: Router::new(be, RouterConfig::new(E, K))?,
            stats: RoutingStats::empty(E),
            grad: vec![0.0; GRADS],
            dw: vec![0.0; n * K],
            u: vec![0.0; n * E],
        })
    }

    /// One SGD step on `data` (this process's tokens).
    fn step<C: Communicator>(
        &mut self,
        model: &mut Model,
        data: &Data,
        comm: &mut Comm<'_, C>,
    ) -> Res<StepLog> {
        let sc = SimBalConfig {
            lambda: 0.05,
            ..SimBalConfig::default()
        };
        let distributed = matches!(comm, Comm::Mpi { .. });
        let lbl = LblConfig {
            alpha: 0.1,
            level: if distributed {
                LblLevel::GlobalBatch
            } else {
                LblLevel::MicroBatch
            },
            ..LblConfig::default()
        };
        let losses = if distributed {
            LossConfig::none().with_lbl(lbl) // SimBal after the all-reduce
        } else {
            LossConfig::none().with_lbl(lbl).with_simbal(sc)
        };
        let n = data.mask.len();
        let batch = Batch::<Be>::new()
            .bias(&model.bias[..])
            .mask(&data.mask[..]);
        let mut pass = self.router.forward_batch(&data.x, &model.r, batch)?;
        pass.stats_into(&mut self.stats)?;
        if let Comm::Mpi { comm, stats, .. } = comm {
            stats.all_reduce(*comm, &mut self.stats)?;
        }
        let nv = self.stats.tokens as f64; // valid tokens of the global batch
        let (g, w) = (&mut self.grad, &model.w);
        g.iter_mut().for_each(|v| *v = 0.0);
        for t in 0..n {
            let xt = &data.x[t * D..(t + 1) * D];
            for e in 0..E {
                self.u[t * E + e] = (0..D).map(|c| w[e * D + c] * xt[c]).sum();
            }
        }
        let (idx, gates) = (pass.indices(), pass.gates());
        let mut task = 0.0;
        for t in 0..n {
            let ut = &self.u[t * E..(t + 1) * E];
            let y: f64 = (0..K)
                .map(|j| gates[t * K + j] * ut[idx[t * K + j] as usize])
                .sum();
            let res = if data.mask[t] == 1 {
                y - data.target[t]
            } else {
                0.0
            };
            task += 0.5 * res * res / nv;
            for j in 0..K {
                let e = idx[t * K + j] as usize;
                self.dw[t * K + j] = res * ut[e] / nv;
                let coef = gates[t * K + j] * res / nv;
                for c in 0..D {
                    g[DE + e * D + c] += coef * data.x[t * D + c];
                }
            }
        }
        let global = distributed.then_some(&self.stats);
        let grads = pass.backward(&self.dw, &losses, global)?;
        g[..DE].copy_from_slice(grads.dr);
        g[2 * DE] = task;
        g[2 * DE + 1] = grads.losses.lbl;
        let mut simbal = grads.losses.simbal;
        if let Comm::Mpi { comm, grads, .. } = comm {
            grads.sum(*comm, g)?;
            // SimBal: the weight is the same on every rank, so is its gradient.
            let be = self.router.backend();
            simbal = simbal_loss(be, &sc, &model.r, Some(&mut g[..DE]), &mut self.simbal_ws)?;
        }
        let bias_cfg = BiasUpdateConfig {
            rate: 0.01,
            centred: true,
        };
        update_bias(
            self.router.backend(),
            &bias_cfg,
            &self.stats,
            &mut model.bias,
        )?;
        for (p, d) in model.r.iter_mut().zip(&g[..DE]) {
            *p -= LR * d;
        }
        for (p, d) in model.w.iter_mut().zip(&g[DE..2 * DE]) {
            *p -= LR * d;
        }
        Ok(StepLog {
            task: g[2 * DE],
            lbl: g[2 * DE + 1],
            simbal,
            stats: self.stats.clone(),
        })
    }
}

/// `max |a - b| / max |b|` (0 for two zero vectors).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// Compares one distributed step with the single-process one; returns the failures.
fn compare(step: usize, d: &StepLog, s: &StepLog, worst: &mut f64) -> Vec<String> {
    let mut fails = Vec::new();
    let (a, b) = (&d.stats, &s.stats);
    if (&a.counts, &a.routed_counts, a.tokens, a.dropped)
        != (&b.counts, &b.routed_counts, b.tokens, b.dropped)
    {
        fails.push(format!("step {step}: merged counts {a:?} != {b:?}"));
    }
    let checks = [
        ("score sums", rel(&a.score_sums, &b.score_sums)),
        ("task loss", rel(&[d.task], &[s.task])),
        ("LBL", rel(&[d.lbl], &[s.lbl])),
        ("SimBal", rel(&[d.simbal], &[s.simbal])),
    ];
    for (what, r) in checks {
        *worst = worst.max(r);
        if r > TOL {
            fails.push(format!("step {step}: {what} differs by {r:e} (relative)"));
        }
    }
    fails
}

fn run<C: Communicator>(world: &C) -> Res<bool> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let data = Data::global();
    let (lo, hi) = (rank * N / size, (rank + 1) * N / size);
    let shard = data.shard(lo, hi);

    // The typed error: statistics of another expert count are refused before any
    // communication (so every rank may test it on its own).
    let mut reducer = StatsAllReduce::new(E);
    let mut wrong = RoutingStats::empty(E + 1);
    match reducer.all_reduce(world, &mut wrong) {
        Err(MpiStatsError::ExpertMismatch { .. }) => {}
        other => return Err(format!("expected an expert mismatch, got {other:?}").into()),
    }
    let bytes = reducer.bytes_per_call();
    // Counts past 2^53 (not representable in f64) still sum exactly, through the fallback.
    let big = (1u64 << 53) + 1;
    let mut huge = RoutingStats::empty(E);
    huge.counts[0] = big + rank as u64;
    huge.routed_counts[E - 1] = rank as u64 + 1;
    huge.tokens = 1;
    huge.score_sums[1] = 0.5;
    reducer.all_reduce(world, &mut huge)?;
    let r = size as u64;
    let want = r * big + r * (r - 1) / 2;
    if huge.counts[0] != want
        || huge.routed_counts[E - 1] != r * (r + 1) / 2
        || huge.tokens != r
        || huge.score_sums[1] != 0.5 * size as f64
        || reducer.fallbacks() != 1
    {
        return Err(format!(
            "counts past 2^53: {huge:?} (want counts[0] = {want}), fallbacks {}",
            reducer.fallbacks()
        )
        .into());
    }

    let mut comm = Comm::Mpi {
        comm: world,
        stats: reducer,
        grads: SumAllReduce::new(GRADS),
    };
    let (mut dist, mut single) = (Model::init(), Model::init());
    let mut dist_tr = Trainer::new(shard.mask.len())?;
    let mut single_tr = Trainer::new(N)?;
    let mut fails = Vec::new();
    let mut worst = 0.0f64;
    let mut log = Vec::new();
    let t0 = std::time::Instant::now();
    for step in 0..STEPS {
        let d = dist_tr.step(&mut dist, &shard, &mut comm)?;
        let s = single_tr.step(&mut single, &data, &mut Comm::<C>::Local)?;
        fails.extend(compare(step, &d, &s, &mut worst));
        log.push((d.task, d.lbl, d.simbal, d.stats.routed_counts.clone()));
    }
    let elapsed = t0.elapsed();
    let params = [
        ("router weight", rel(&dist.r, &single.r)),
        ("expert readouts", rel(&dist.w, &single.w)),
    ];
    for (what, r) in params {
        worst = worst.max(r);
        if r > TOL {
            fails.push(format!("{what} differs by {r:e} (relative)"));
        }
    }
    if dist.bias != single.bias {
        fails.push(format!("biases {:?} != {:?}", dist.bias, single.bias));
    }
    if dist.r == Model::init().r || dist.bias.iter().all(|&b| b == 0.0) {
        fails.push("training moved nothing".into());
    }
    for f in &fails {
        eprintln!("rank {rank}: FAIL {f}");
    }
    println!(
        "rank {rank}/{size}: tokens {lo}..{hi} ({} valid), {STEPS} steps, worst relative difference {worst:.2e}, {}",
        shard.mask.iter().filter(|&&m| m == 1).count(),
        if fails.is_empty() { "ok" } else { "FAILED" }
    );
    if rank == 0 {
        for (i, (task, lbl, simbal, counts)) in log.iter().enumerate() {
            println!("  step {i}: task {task:.6} lbl {lbl:.6} simbal {simbal:.6} routed counts {counts:?}");
        }
        println!(
            "  stats all-reduce: {bytes} bytes per rank per step (E = {E}), {:.1} ms for {STEPS} steps of both runs",
            elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(fails.is_empty())
}

fn main() {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI was already initialised");
        std::process::exit(2);
    };
    let world = universe.world();
    let ok = match run(&world) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("rank {}: error: {e}", world.rank());
            // The other ranks may wait in a collective for this one.
            world.abort(3);
        }
    };
    let mut all_ok = 0i32;
    world.all_reduce_into(&i32::from(ok), &mut all_ok, SystemOperation::min());
    if world.rank() == 0 {
        println!(
            "dp_equality on {} ranks: {}",
            world.size(),
            if all_ok == 1 { "PASS" } else { "FAIL" }
        );
    }
    drop(universe);
    std::process::exit(if all_ok == 1 { 0 } else { 1 });
}
