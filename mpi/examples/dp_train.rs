//! Data-parallel training of the reproduction's MoE model over MPI, checked against one process.
//!
//! Run under `mpirun -n R` (`1 <= R <= 11`; `mpi/run-tests.sh` runs 2 and 3). The model is the
//! first edition's MoE layer (`simbal_repro::model`: a router through simbal on the faer
//! backend, 8 MLP experts, top-2, the aux-loss-free selection bias) on its synthetic regression
//! task, trained with Adam. Every rank draws the same global batch of 11 sequences and trains on
//! its shard of them (uneven for 2 and 3 ranks). Per step:
//!
//! 1. forward on the shard; this rank's routing statistics;
//! 2. **one all-reduce of the statistics** ([`StatsAllReduce`]): the global batch's counts and
//!    score sums, from which the global-batch LBL (in the backward) and the bias update come;
//! 3. backward with SimBal (no communication: the router weight is the same on every rank) and
//!    the global-batch LBL (`shard_factor = N / n_r`, because the gradients are then averaged
//!    with weights `n_r / N`, as a framework averaging over ranks does);
//! 4. **one all-reduce of the weighted gradients and loss values** ([`SumAllReduce`]);
//! 5. the bias update from the global statistics, Adam on every parameter.
//!
//! It prints each step's global loss values and MaxVio beside every rank's own MaxVio, then
//! trains the same model on the whole batch in one process (micro-batch LBL over the whole
//! batch) and checks every step's loss values, the selection bias and, at the end, every
//! parameter: f64 to 1e-12 relative, then the same run in f32 to the SPEC's 1e-4.

use mpi::traits::*;
use simbal_core::Rng;
use simbal_core::{
    update_bias, BiasUpdateConfig, LblConfig, LblLevel, LoadMetrics, LossConfig, Router,
    RoutingStats, SimBalConfig,
};
use simbal_faer::{Faer, FaerElem, Par};
use simbal_mpi::{StatsAllReduce, SumAllReduce};
use simbal_repro::adam::Adam;
use simbal_repro::methods::{Coefficients, InitPolicy, Method};
use simbal_repro::model::{Model, ModelState};
use simbal_repro::task::{Batch, SyntheticConfig, SyntheticTask, Task};
use simbal_repro::train::{build_model, RunSpec, TrainConfig};

mod common;

use common::{rel, run_ranks, Res};

const SEQS: usize = 11;
const SEQ_LEN: usize = 16;
const STEPS: usize = 8;

fn train_config() -> TrainConfig {
    TrainConfig {
        steps: STEPS,
        batch_seqs: SEQS,
        seq_len: SEQ_LEN,
        lr: 3e-3,
        eval_every: 1,
        val_seqs: 1,
        pes_tokens: 1,
        experts: 8,
        k: 2,
        hidden: 16,
        text_width: 1,
        text_emb: 1,
        capacity_factor: None,
    }
}

/// One step's values, summed over the shards (the global batch's).
#[derive(Debug, Clone, PartialEq)]
struct StepLog {
    loss: f64,
    lbl: f64,
    simbal: f64,
    max_vio: f64,
}

/// A model with its router, optimiser and buffers; `shard` is `None` for the single process.
struct Trainer<T: FaerElem> {
    model: Model<T>,
    router: Router<Faer<T>>,
    adam: Adam,
    st: ModelState<T>,
    stats: RoutingStats,
    bias_cfg: BiasUpdateConfig,
}

impl<T: FaerElem> Trainer<T> {
    fn new(task: &Task) -> Res<Self> {
        let cfg = train_config();
        let spec = RunSpec {
            method: Method::BiasSimBal,
            seed: 7,
            coefs: Coefficients::default(),
            init: InitPolicy::Paper,
        };
        let model = build_model::<T>(task, &cfg, &spec)?;
        let router = Router::new(Faer::with_par(Par::Seq), model.moe.config().router())?;
        Ok(Self {
            model,
            router,
            adam: Adam::new(cfg.lr),
            st: ModelState::default(),
            stats: RoutingStats::default(),
            bias_cfg: BiasUpdateConfig {
                rate: 1e-2,
                centred: true,
            },
        })
    }

    fn losses(level: LblLevel, shard_factor: f64) -> LossConfig {
        LossConfig::none()
            .with_simbal(SimBalConfig {
                lambda: 0.1,
                ..SimBalConfig::default()
            })
            .with_lbl(LblConfig {
                alpha: 0.05,
                level,
                shard_factor,
                ..LblConfig::default()
            })
    }

    /// One step on the whole batch in this process.
    fn step_single(&mut self, batch: &Batch<T>) -> Res<StepLog> {
        self.model.zero_grad();
        let losses = Self::losses(LblLevel::MicroBatch, 1.0);
        let (loss, aux) = self
            .model
            .train_step(&mut self.router, batch, &mut self.st, &losses)?;
        self.router.stats_into(&mut self.stats)?;
        self.finish_step()?;
        Ok(StepLog {
            loss,
            lbl: aux.lbl.to_f64_lossy(),
            simbal: aux.simbal.to_f64_lossy(),
            max_vio: LoadMetrics::from_counts(&self.stats.counts).max_vio,
        })
    }

    /// One step on this rank's `shard` of a global batch of `global_tokens` tokens; returns the
    /// global values and this rank's own MaxVio.
    fn step_shard<C: Communicator>(
        &mut self,
        shard: &Batch<T>,
        global_tokens: usize,
        comm: &C,
        stats_ar: &mut StatsAllReduce,
        grads_ar: &mut SumAllReduce,
        grads: &mut [f64],
    ) -> Res<(StepLog, f64)> {
        self.model.zero_grad();
        let loss = self
            .model
            .forward_train(&mut self.router, shard, &mut self.st)?;
        self.router.stats_into(&mut self.stats)?;
        let local_vio = LoadMetrics::from_counts(&self.stats.counts).max_vio;
        stats_ar.all_reduce(comm, &mut self.stats)?;
        // The task loss is a mean over the shard: weight it by the shard's share of the batch,
        // and scale the LBL's contribution up by the inverse so that the weighting leaves it a
        // plain sum over the shards.
        let weight = shard.tokens() as f64 / global_tokens as f64;
        let losses = Self::losses(LblLevel::GlobalBatch, 1.0 / weight);
        let aux = self.model.backward_train(
            &mut self.router,
            shard,
            &mut self.st,
            &losses,
            Some(&self.stats),
        )?;
        let values = [loss, aux.lbl.to_f64_lossy(), aux.simbal.to_f64_lossy()];
        let params = self.model.params_mut();
        let slots = grads.iter_mut();
        let all = params
            .iter()
            .flat_map(|p| p.g.iter().map(|g| g.to_f64_lossy()));
        for (slot, v) in slots.zip(all.chain(values)) {
            *slot = weight * v;
        }
        grads_ar.sum(comm, grads)?;
        let mut at = 0;
        for p in self.model.params_mut() {
            for (g, &s) in p.g.iter_mut().zip(&grads[at..]) {
                *g = T::of(s);
            }
            at += p.g.len();
        }
        self.finish_step()?;
        let log = StepLog {
            loss: grads[at],
            lbl: grads[at + 1],
            simbal: grads[at + 2],
            max_vio: LoadMetrics::from_counts(&self.stats.counts).max_vio,
        };
        Ok((log, local_vio))
    }

    /// The bias update from this step's (global) statistics and the optimiser step.
    fn finish_step(&mut self) -> Res<()> {
        let be = self.router.backend();
        update_bias(be, &self.bias_cfg, &self.stats, &mut self.model.moe.bias)?;
        self.adam.begin_step();
        for p in self.model.params_mut() {
            self.adam.update(p);
        }
        Ok(())
    }

    fn gradient_len(&mut self) -> usize {
        self.model.params_mut().iter().map(|p| p.g.len()).sum()
    }

    /// Every parameter and the bias, widened, in one vector.
    fn flat(&mut self) -> Vec<f64> {
        let bias: Vec<f64> = self
            .model
            .moe
            .bias
            .iter()
            .map(|b| b.to_f64_lossy())
            .collect();
        let params = self.model.params_mut();
        let flat = params
            .iter()
            .flat_map(|p| p.w.iter().map(|w| w.to_f64_lossy()));
        flat.chain(bias).collect()
    }
}

fn run<T: FaerElem, C: Communicator>(world: &C, tol: f64) -> Res<bool> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if size > SEQS {
        return Err(format!("{size} ranks for a batch of {SEQS} sequences").into());
    }
    let task = Task::Synthetic(SyntheticTask::new(SyntheticConfig::default(), 3)?);
    let seqs = rank * SEQS / size..(rank + 1) * SEQS / size;
    let (mut dist, mut single) = (Trainer::<T>::new(&task)?, Trainer::<T>::new(&task)?);
    let mut stats_ar = StatsAllReduce::new(dist.model.moe.config().experts);
    let mut grads = vec![0.0; dist.gradient_len() + 3];
    let mut grads_ar = SumAllReduce::new(grads.len());
    let mut rank_vio = vec![0.0f64; size];
    let (mut batch, mut shard) = (Batch::<T>::default(), Batch::<T>::default());
    let mut rng = Rng::new(11);
    let mut worst = 0.0f64;
    let mut fails = Vec::new();
    if rank == 0 {
        println!(
            "dp_train ({}): {size} ranks, {SEQS} x {SEQ_LEN} tokens per step, stats all-reduce {} bytes, gradient all-reduce {} bytes per rank",
            T::NAME,
            stats_ar.bytes_per_call(),
            8 * grads.len()
        );
    }
    for step in 1..=STEPS {
        task.sample(&mut rng, SEQS, SEQ_LEN, &mut batch)?;
        batch.shard_into(seqs.clone(), &mut shard)?;
        let (d, local_vio) = dist.step_shard(
            &shard,
            batch.tokens(),
            world,
            &mut stats_ar,
            &mut grads_ar,
            &mut grads,
        )?;
        world.all_gather_into(&local_vio, &mut rank_vio[..]);
        let s = single.step_single(&batch)?;
        for (what, a, b) in [
            ("loss", d.loss, s.loss),
            ("LBL", d.lbl, s.lbl),
            ("SimBal", d.simbal, s.simbal),
        ] {
            let r = rel(&[a], &[b]);
            worst = worst.max(r);
            if r > tol {
                fails.push(format!(
                    "step {step}: {what} {a:e} vs {b:e} (relative {r:.1e})"
                ));
            }
        }
        if d.max_vio != s.max_vio || dist.model.moe.bias != single.model.moe.bias {
            fails.push(format!("step {step}: global counts or bias differ"));
        }
        if rank == 0 {
            let per_rank: Vec<String> = rank_vio.iter().map(|v| format!("{v:.3}")).collect();
            println!(
                "  step {step}: loss {:.5} LBL {:.5} SimBal {:.5}  MaxVio global {:.3}, per rank [{}]",
                d.loss,
                d.lbl,
                d.simbal,
                d.max_vio,
                per_rank.join(", ")
            );
        }
    }
    let r = rel(&dist.flat(), &single.flat());
    worst = worst.max(r);
    if r > tol {
        fails.push(format!("parameters differ by {r:.1e} (relative)"));
    }
    for f in &fails {
        eprintln!("rank {rank}: FAIL {f}");
    }
    println!(
        "rank {rank}/{size} ({}): sequences {seqs:?}, worst relative difference {worst:.1e} (tolerance {tol:.0e}), {}",
        T::NAME,
        if fails.is_empty() { "ok" } else { "FAILED" }
    );
    Ok(fails.is_empty())
}

fn main() {
    // f64 to 1e-12, then f32 to the SPEC's 1e-4; an error in either aborts at once.
    run_ranks("dp_train", |world| {
        Ok(run::<f64, _>(world, 1e-12)? & run::<f32, _>(world, 1e-4)?)
    })
}
