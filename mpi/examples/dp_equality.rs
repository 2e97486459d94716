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
//! (1e-12 relative; the biases exactly). The whole check runs four times: on the reference
//! backend and on faer, each in f64 (tolerance 1e-12) and in f32 (the SPEC's 1e-4; the
//! gradients are summed over the ranks in f64 and rounded back). Exit status 0 when every rank
//! agrees.

use mpi::traits::*;
use simbal_core::{
    simbal_loss, update_bias, Backend, Batch, BiasUpdateConfig, LblConfig, LblLevel, LoadMetrics,
    LossConfig, Reference, Router, RouterConfig, RoutingStats, Scalar, SimBalConfig,
    SimbalWorkspace, WeightLayout,
};
use simbal_faer::{Faer, Par};
use simbal_mpi::{MpiStatsError, StatsAllReduce, SumAllReduce};

mod common;

use common::{rel, run_ranks, Res};

/// A backend on host memory: the model hands it slices.
trait HostBackend<T>: Backend<Elem = T, View = [T], IdxView = [u32]> {}
impl<T, B: Backend<Elem = T, View = [T], IdxView = [u32]>> HostBackend<T> for B {}

/// Tokens of the global batch, width, experts, experts per token, steps.
const N: usize = 31;
const D: usize = 6;
const E: usize = 4;
const K: usize = 2;
const STEPS: usize = 6;
const LR: f64 = 0.2;

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
struct Data<T> {
    x: Vec<T>,
    mask: Vec<u32>,
    target: Vec<T>,
}

fn of<T: Scalar>(v: Vec<f64>) -> Vec<T> {
    v.into_iter().map(T::of).collect()
}

impl<T: Scalar> Data<T> {
    fn global() -> Self {
        let mask = (0..N).map(|t| u32::from(t % 7 != 3)).collect();
        Self {
            x: of(lcg(1, N * D)),
            mask,
            target: of(lcg(2, N)),
        }
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
struct Model<T> {
    r: Vec<T>,
    w: Vec<T>,
    bias: Vec<T>,
}

impl<T: Scalar> Model<T> {
    fn init() -> Self {
        Self {
            r: of(lcg(3, D * E).iter().map(|v| 0.8 * v).collect()),
            w: of(lcg(4, E * D)),
            bias: vec![T::zero(); E],
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
struct Trainer<B: HostBackend<T>, T: Scalar> {
    router: Router<B>,
    simbal_ws: SimbalWorkspace<B>,
    stats: RoutingStats,
    /// dR, dW, task loss, LBL (the values the ranks sum), in f64.
    grad: Vec<f64>,
    /// dR in the element type (SimBal's gradient is added to it).
    dr: Vec<T>,
    dw: Vec<T>,
    u: Vec<T>,
}

impl<B: HostBackend<T> + Clone, T: Scalar> Trainer<B, T> {
    fn new(be: B, n: usize) -> Res<Self> {
        Ok(Self {
            simbal_ws: SimbalWorkspace::new(&be, WeightLayout::DxE, D, E)?,
            router: Router::new(be, RouterConfig::new(E, K))?,
            stats: RoutingStats::empty(E),
            grad: vec![0.0; GRADS],
            dr: vec![T::zero(); DE],
            dw: vec![T::zero(); n * K],
            u: vec![T::zero(); n * E],
        })
    }

    /// One SGD step on `data` (this process's tokens); also returns this shard's own MaxVio.
    fn step<C: Communicator>(
        &mut self,
        model: &mut Model<T>,
        data: &Data<T>,
        comm: &mut Comm<'_, C>,
    ) -> Res<(StepLog, f64)> {
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
        let batch = Batch::<B>::new().bias(&model.bias[..]).mask(&data.mask[..]);
        let mut pass = self.router.forward_batch(&data.x, &model.r, batch)?;
        pass.stats_into(&mut self.stats)?;
        let local_vio = LoadMetrics::from_counts(&self.stats.counts).max_vio;
        if let Comm::Mpi { comm, stats, .. } = comm {
            stats.all_reduce(*comm, &mut self.stats)?;
        }
        let nv = T::of(self.stats.tokens as f64); // valid tokens of the global batch
        let (g, w) = (&mut self.grad, &model.w);
        g.iter_mut().for_each(|v| *v = 0.0);
        for t in 0..n {
            let xt = &data.x[t * D..(t + 1) * D];
            for e in 0..E {
                self.u[t * E + e] = (0..D).fold(T::zero(), |s, c| s + w[e * D + c] * xt[c]);
            }
        }
        let (idx, gates) = (pass.indices(), pass.gates());
        let mut task = T::zero();
        for t in 0..n {
            let ut = &self.u[t * E..(t + 1) * E];
            let y = (0..K).fold(T::zero(), |s, j| {
                s + gates[t * K + j] * ut[idx[t * K + j] as usize]
            });
            let res = if data.mask[t] == 1 {
                y - data.target[t]
            } else {
                T::zero()
            };
            task = task + T::of(0.5) * res * res / nv;
            for j in 0..K {
                let e = idx[t * K + j] as usize;
                self.dw[t * K + j] = res * ut[e] / nv;
                let coef = (gates[t * K + j] * res / nv).to_f64_lossy();
                for c in 0..D {
                    g[DE + e * D + c] += coef * data.x[t * D + c].to_f64_lossy();
                }
            }
        }
        let global = distributed.then_some(&self.stats);
        let grads = pass.backward(&self.dw, &losses, global)?;
        for (gv, &d) in g.iter_mut().zip(grads.dr) {
            *gv = d.to_f64_lossy();
        }
        g[2 * DE] = task.to_f64_lossy();
        g[2 * DE + 1] = grads.losses.lbl.to_f64_lossy();
        let mut simbal = grads.losses.simbal;
        if let Comm::Mpi { comm, grads, .. } = comm {
            grads.sum(*comm, g)?;
        }
        for (d, &s) in self.dr.iter_mut().zip(&g[..DE]) {
            *d = T::of(s);
        }
        if distributed {
            // SimBal: the weight is the same on every rank, so is its gradient.
            let be = self.router.backend();
            simbal = simbal_loss(be, &sc, &model.r, Some(&mut self.dr), &mut self.simbal_ws)?;
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
        let lr = T::of(LR);
        for (p, &d) in model.r.iter_mut().zip(&self.dr) {
            *p = *p - lr * d;
        }
        for (p, &d) in model.w.iter_mut().zip(&g[DE..2 * DE]) {
            *p = *p - lr * T::of(d);
        }
        let log = StepLog {
            task: g[2 * DE],
            lbl: g[2 * DE + 1],
            simbal: simbal.to_f64_lossy(),
            stats: self.stats.clone(),
        };
        Ok((log, local_vio))
    }
}

/// Compares one distributed step with the single-process one; returns the failures.
fn compare(step: usize, d: &StepLog, s: &StepLog, tol: f64, worst: &mut f64) -> Vec<String> {
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
        if r > tol {
            fails.push(format!("step {step}: {what} differs by {r:e} (relative)"));
        }
    }
    fails
}

/// The reducer's own guarantees: the typed error before any communication, and exact counts
/// past 2^53 through the integer fallback. Returns the bytes of one statistics all-reduce.
fn check_reducer<C: Communicator>(world: &C) -> Res<usize> {
    let (rank, size) = (world.rank() as u64, world.size() as u64);
    let mut reducer = StatsAllReduce::new(E);
    let mut wrong = RoutingStats::empty(E + 1);
    match reducer.all_reduce(world, &mut wrong) {
        Err(MpiStatsError::ExpertMismatch { .. }) => {}
        other => return Err(format!("expected an expert mismatch, got {other:?}").into()),
    }
    let big = (1u64 << 53) + 1;
    let mut huge = RoutingStats::empty(E);
    huge.counts[0] = big + rank;
    huge.routed_counts[E - 1] = rank + 1;
    huge.tokens = 1;
    huge.score_sums[1] = 0.5;
    reducer.all_reduce(world, &mut huge)?;
    let r = size;
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
    Ok(reducer.bytes_per_call())
}

/// The check on backend `be` in element type `T` to relative tolerance `tol`.
fn run<B: HostBackend<T> + Clone, T: Scalar, C: Communicator>(
    world: &C,
    be: B,
    name: &str,
    tol: f64,
) -> Res<bool> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let data = Data::<T>::global();
    let (lo, hi) = (rank * N / size, (rank + 1) * N / size);
    let shard = data.shard(lo, hi);
    let mut comm = Comm::Mpi {
        comm: world,
        stats: StatsAllReduce::new(E),
        grads: SumAllReduce::new(GRADS),
    };
    let (mut dist, mut single) = (Model::<T>::init(), Model::<T>::init());
    let mut dist_tr = Trainer::new(be.clone(), shard.mask.len())?;
    let mut single_tr = Trainer::new(be, N)?;
    let mut fails = Vec::new();
    let mut worst = 0.0f64;
    let mut log = Vec::new();
    let mut rank_vio = vec![0.0f64; size];
    for step in 0..STEPS {
        let (d, local_vio) = dist_tr.step(&mut dist, &shard, &mut comm)?;
        world.all_gather_into(&local_vio, &mut rank_vio[..]);
        let (s, _) = single_tr.step(&mut single, &data, &mut Comm::<C>::Local)?;
        fails.extend(compare(step, &d, &s, tol, &mut worst));
        let global_vio = LoadMetrics::from_counts(&d.stats.counts).max_vio;
        log.push((d.task, d.lbl, d.simbal, global_vio, rank_vio.clone()));
    }
    let wide = |v: &[T]| v.iter().map(|x| x.to_f64_lossy()).collect::<Vec<_>>();
    let params = [
        ("router weight", rel(&wide(&dist.r), &wide(&single.r))),
        ("expert readouts", rel(&wide(&dist.w), &wide(&single.w))),
    ];
    for (what, r) in params {
        worst = worst.max(r);
        if r > tol {
            fails.push(format!("{what} differs by {r:e} (relative)"));
        }
    }
    if dist.bias != single.bias {
        fails.push(format!("biases {:?} != {:?}", dist.bias, single.bias));
    }
    if dist.r == Model::<T>::init().r || dist.bias.iter().all(|&b| b == T::zero()) {
        fails.push("training moved nothing".into());
    }
    for f in &fails {
        eprintln!("rank {rank} ({name}): FAIL {f}");
    }
    println!(
        "rank {rank}/{size} ({name}): tokens {lo}..{hi} ({} valid), {STEPS} steps, worst relative difference {worst:.2e} (tolerance {tol:.0e}), {}",
        shard.mask.iter().filter(|&&m| m == 1).count(),
        if fails.is_empty() { "ok" } else { "FAILED" }
    );
    if rank == 0 {
        for (i, (task, lbl, simbal, vio, per_rank)) in log.iter().enumerate() {
            let per_rank: Vec<String> = per_rank.iter().map(|v| format!("{v:.2}")).collect();
            println!(
                "  step {i}: task {task:.6} lbl {lbl:.6} simbal {simbal:.6} MaxVio global {vio:.2}, per rank [{}]",
                per_rank.join(", ")
            );
        }
    }
    Ok(fails.is_empty())
}

fn main() {
    run_ranks("dp_equality", |world| {
        let t0 = std::time::Instant::now();
        let bytes = check_reducer(world)?;
        if world.rank() == 0 {
            println!("stats all-reduce: {bytes} bytes per rank per step (E = {E})");
        }
        let tol32 = f32::CONFORMANCE_TOL;
        let ok = run(world, Reference::<f64>::new(), "reference f64", 1e-12)?
            & run(world, Faer::<f64>::with_par(Par::Seq), "faer f64", 1e-12)?
            & run(world, Reference::<f32>::new(), "reference f32", tol32)?
            & run(world, Faer::<f32>::with_par(Par::Seq), "faer f32", tol32)?;
        if world.rank() == 0 {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            println!("{ms:.1} ms for the four checks");
        }
        Ok(ok)
    })
}
