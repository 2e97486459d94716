//! The two tasks: a synthetic clustered regression task (the default, no files needed) and
//! byte-level language modelling on any text file.

use crate::error::{io_err, ReproError, Result};
use serde::Serialize;
use simbal_core::{Rng, Scalar};
use std::path::Path;

/// Parameters of the synthetic task.
///
/// Tokens come from `clusters` Gaussian clusters in `R^dim`; cluster `c` has its own teacher
/// `y = V_c tanh(U_c (x - mu_c) / noise) + o_c`, a small random one-hidden-layer network, so a
/// student expert that serves few clusters fits them better than one that serves many. A sequence
/// mixes `clusters_per_seq` clusters drawn by popularity `p_c ~ (c + 1)^-zipf`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyntheticConfig {
    /// Token width `D` (the router's and the experts' input).
    pub dim: usize,
    /// Target width.
    pub out_dim: usize,
    /// Number of clusters.
    pub clusters: usize,
    /// Clusters mixed in one sequence.
    pub clusters_per_seq: usize,
    /// Hidden units of each cluster's teacher.
    pub teacher_hidden: usize,
    /// Standard deviation of each coordinate of a cluster centre.
    pub center_scale: f64,
    /// Standard deviation of each coordinate of a token around its centre.
    pub noise: f64,
    /// Gain of the teacher's first layer (larger: more non-linear targets).
    pub teacher_gain: f64,
    /// Popularity skew of the clusters (0: uniform).
    pub zipf: f64,
    /// Norm of a direction shared by every token (the anisotropy of real hidden states: all
    /// tokens first look alike to a fresh router).
    pub shared_mean: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            out_dim: 8,
            clusters: 32,
            clusters_per_seq: 4,
            teacher_hidden: 8,
            center_scale: 1.0,
            noise: 0.5,
            teacher_gain: 2.0,
            zipf: 0.5,
            shared_mean: 6.0,
        }
    }
}

/// One cluster: its centre and its teacher network.
#[derive(Debug, Clone)]
struct Cluster {
    center: Vec<f64>,
    u: Vec<f64>,      // teacher_hidden x dim
    v: Vec<f64>,      // out_dim x teacher_hidden
    offset: Vec<f64>, // out_dim
}

/// The synthetic task, fixed by its configuration and seed.
#[derive(Debug, Clone)]
pub struct SyntheticTask {
    cfg: SyntheticConfig,
    clusters: Vec<Cluster>,
    cdf: Vec<f64>,
}

impl SyntheticTask {
    /// Draws the clusters and teachers from `seed`.
    pub fn new(cfg: SyntheticConfig, seed: u64) -> Result<Self> {
        if cfg.dim == 0 || cfg.out_dim == 0 || cfg.clusters == 0 || cfg.teacher_hidden == 0 {
            return Err(ReproError::Config(
                "synthetic task: dim, out_dim, clusters and teacher_hidden must be >= 1".into(),
            ));
        }
        if cfg.clusters_per_seq == 0 || cfg.clusters_per_seq > cfg.clusters {
            return Err(ReproError::Config(format!(
                "synthetic task: clusters_per_seq must be in 1..={}",
                cfg.clusters
            )));
        }
        for (what, v) in [
            ("center_scale", cfg.center_scale),
            ("noise", cfg.noise),
            ("teacher_gain", cfg.teacher_gain),
            ("zipf", cfg.zipf),
            ("shared_mean", cfg.shared_mean),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ReproError::Config(format!("synthetic task: {what} = {v}")));
            }
        }
        if cfg.noise == 0.0 {
            return Err(ReproError::Config(
                "synthetic task: noise must be > 0".into(),
            ));
        }
        let mut rng = Rng::new(seed ^ 0x5EED_7A5C);
        let (d, h, o) = (cfg.dim, cfg.teacher_hidden, cfg.out_dim);
        let mut shared = vec![0.0; d];
        rng.fill_normal(1.0, &mut shared);
        let norm = shared.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        shared.iter_mut().for_each(|v| *v *= cfg.shared_mean / norm);
        let clusters = (0..cfg.clusters)
            .map(|_| {
                let mut center = vec![0.0; d];
                rng.fill_normal(cfg.center_scale, &mut center);
                center.iter_mut().zip(&shared).for_each(|(c, m)| *c += m);
                let mut u = vec![0.0; h * d];
                rng.fill_normal(cfg.teacher_gain / (d as f64).sqrt(), &mut u);
                let mut v = vec![0.0; o * h];
                rng.fill_normal(1.0 / (h as f64).sqrt(), &mut v);
                let mut offset = vec![0.0; o];
                rng.fill_normal(0.5, &mut offset);
                Cluster {
                    center,
                    u,
                    v,
                    offset,
                }
            })
            .collect();
        let weights: Vec<f64> = (0..cfg.clusters)
            .map(|c| ((c + 1) as f64).powf(-cfg.zipf))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Ok(Self { cfg, clusters, cdf })
    }

    /// The configuration.
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    fn pick_cluster(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cfg.clusters - 1)
    }

    /// Appends one token of cluster `c` to `x` and its target to `y`.
    fn token<T: Scalar>(&self, c: usize, rng: &mut Rng, x: &mut Vec<T>, y: &mut Vec<T>) {
        let cl = &self.clusters[c];
        let (d, h, o) = (self.cfg.dim, self.cfg.teacher_hidden, self.cfg.out_dim);
        let mut eps = vec![0.0; d];
        rng.fill_normal(1.0, &mut eps);
        x.extend(
            cl.center
                .iter()
                .zip(&eps)
                .map(|(m, e)| T::of(m + self.cfg.noise * e)),
        );
        let hidden: Vec<f64> =
            cl.u.chunks_exact(d)
                .map(|row| row.iter().zip(&eps).map(|(a, b)| a * b).sum::<f64>().tanh())
                .collect();
        for j in 0..o {
            let s: f64 = cl.v[j * h..(j + 1) * h]
                .iter()
                .zip(&hidden)
                .map(|(a, b)| a * b)
                .sum();
            y.push(T::of(s + cl.offset[j]));
        }
    }

    /// Fills `batch` with `seqs` sequences of `seq_len` tokens.
    pub fn sample<T: Scalar>(
        &self,
        rng: &mut Rng,
        seqs: usize,
        seq_len: usize,
        batch: &mut Batch<T>,
    ) {
        batch.reset(seqs, seq_len);
        let mut chosen = Vec::with_capacity(self.cfg.clusters_per_seq);
        for _ in 0..seqs {
            chosen.clear();
            while chosen.len() < self.cfg.clusters_per_seq {
                let c = self.pick_cluster(rng);
                if !chosen.contains(&c) {
                    chosen.push(c);
                }
            }
            for _ in 0..seq_len {
                let c = chosen[rng.below(chosen.len())];
                batch.cluster.push(c as u32);
                self.token(c, rng, &mut batch.x, &mut batch.y);
            }
        }
    }
}

/// Byte-level language modelling on a text file: predict each byte from the `context` bytes
/// before it; the last `val_fraction` of the file is held out.
#[derive(Debug, Clone)]
pub struct TextTask {
    train: Vec<u8>,
    val: Vec<u8>,
    context: usize,
    source: String,
}

impl TextTask {
    /// Reads `path` and splits it.
    pub fn from_file(path: &Path, context: usize, val_fraction: f64) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Self::from_bytes(bytes, context, val_fraction, path.display().to_string())
    }

    /// Splits `bytes` (named `source` in reports).
    pub fn from_bytes(
        bytes: Vec<u8>,
        context: usize,
        val_fraction: f64,
        source: String,
    ) -> Result<Self> {
        if context == 0 {
            return Err(ReproError::Config("text task: context must be >= 1".into()));
        }
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(ReproError::Config(format!(
                "text task: val_fraction must be in (0, 1), got {val_fraction}"
            )));
        }
        if bytes.len() < 256 {
            return Err(ReproError::Config(format!(
                "text task: {source} has {} bytes; need at least 256",
                bytes.len()
            )));
        }
        let split = ((bytes.len() as f64) * (1.0 - val_fraction)) as usize;
        Ok(Self {
            train: bytes[..split].to_vec(),
            val: bytes[split..].to_vec(),
            context,
            source,
        })
    }

    /// Bytes of context.
    pub fn context(&self) -> usize {
        self.context
    }
    /// Where the text came from.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Sizes of the training and validation splits in bytes.
    pub fn split_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    fn push_window<T: Scalar>(
        &self,
        data: &[u8],
        start: usize,
        seq_len: usize,
        batch: &mut Batch<T>,
    ) {
        for p in start..start + seq_len {
            for i in (1..=self.context).rev() {
                batch.ctx.push(if p >= i { data[p - i] } else { 0 });
            }
            batch.next.push(data[p]);
        }
    }

    /// Fills `batch` with `seqs` random windows of `seq_len` consecutive training bytes.
    pub fn sample<T: Scalar>(
        &self,
        rng: &mut Rng,
        seqs: usize,
        seq_len: usize,
        batch: &mut Batch<T>,
    ) -> Result<()> {
        window_fits("training", &self.train, seq_len)?;
        batch.reset(seqs, seq_len);
        for _ in 0..seqs {
            let start = rng.below(self.train.len() - seq_len + 1);
            self.push_window(&self.train, start, seq_len, batch);
        }
        Ok(())
    }

    /// Up to `seqs` evenly spaced windows of the validation split (at least one).
    pub fn validation<T: Scalar>(&self, seqs: usize, seq_len: usize) -> Result<Batch<T>> {
        window_fits("validation", &self.val, seq_len)?;
        let fit = self.val.len() / seq_len;
        let seqs = seqs.min(fit).max(1);
        let mut batch = Batch::default();
        batch.reset(seqs, seq_len);
        let stride = self.val.len() / seqs;
        for s in 0..seqs {
            let start = (s * stride).min(self.val.len() - seq_len);
            self.push_window(&self.val, start, seq_len, &mut batch);
        }
        Ok(batch)
    }
}

/// A window of `seq_len` bytes fits in the `which` split.
fn window_fits(which: &str, split: &[u8], seq_len: usize) -> Result<()> {
    if seq_len > split.len() {
        return Err(ReproError::Config(format!(
            "text task: seq_len {seq_len} exceeds the {which} split ({} bytes)",
            split.len()
        )));
    }
    Ok(())
}

/// A task of the experiment.
#[derive(Debug, Clone)]
pub enum Task {
    /// The synthetic clustered regression task.
    Synthetic(SyntheticTask),
    /// Byte-level language modelling.
    Text(TextTask),
}

impl Task {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Synthetic(_) => "synthetic",
            Task::Text(_) => "text",
        }
    }

    /// Fills `batch` with a training batch.
    pub fn sample<T: Scalar>(
        &self,
        rng: &mut Rng,
        seqs: usize,
        seq_len: usize,
        batch: &mut Batch<T>,
    ) -> Result<()> {
        match self {
            Task::Synthetic(t) => {
                t.sample(rng, seqs, seq_len, batch);
                Ok(())
            }
            Task::Text(t) => t.sample(rng, seqs, seq_len, batch),
        }
    }

    /// The fixed validation batch (`seed` only matters for the synthetic task).
    pub fn validation<T: Scalar>(
        &self,
        seqs: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Batch<T>> {
        match self {
            Task::Synthetic(t) => {
                let mut rng = Rng::new(seed ^ 0x0000_7A11_DA7E);
                let mut b = Batch::default();
                t.sample(&mut rng, seqs, seq_len, &mut b);
                Ok(b)
            }
            Task::Text(t) => t.validation(seqs, seq_len),
        }
    }
}

/// A batch of `seqs` sequences of `seq_len` tokens, token-major.
#[derive(Debug, Clone, Default)]
pub struct Batch<T> {
    /// Sequences.
    pub seqs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Synthetic: token features, `n x dim`.
    pub x: Vec<T>,
    /// Synthetic: targets, `n x out_dim`.
    pub y: Vec<T>,
    /// Synthetic: each token's cluster.
    pub cluster: Vec<u32>,
    /// Text: the context bytes of each token, `n x context`, oldest first.
    pub ctx: Vec<u8>,
    /// Text: the byte to predict.
    pub next: Vec<u8>,
}

impl<T> Batch<T> {
    /// Tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.seqs * self.seq_len
    }

    /// Sequences `seqs` (a range of `0..self.seqs`) of this batch into `out`: one shard of a
    /// global batch, for data-parallel training (no allocation once `out` is sized).
    ///
    /// # Errors
    /// [`ReproError::Config`] for a range outside the batch.
    pub fn shard_into(&self, seqs: core::ops::Range<usize>, out: &mut Batch<T>) -> Result<()>
    where
        T: Copy,
    {
        if seqs.start > seqs.end || seqs.end > self.seqs {
            return Err(ReproError::Config(format!(
                "shard {seqs:?} of a batch of {} sequences",
                self.seqs
            )));
        }
        out.reset(seqs.len(), self.seq_len);
        let n = self.tokens();
        let tokens = seqs.start * self.seq_len..seqs.end * self.seq_len;
        // Each field holds the same number of values per token (none when the task lacks it).
        fn rows<U: Copy>(src: &[U], n: usize, t: &core::ops::Range<usize>, out: &mut Vec<U>) {
            let w = src.len().checked_div(n).unwrap_or(0);
            out.extend_from_slice(&src[t.start * w..t.end * w]);
        }
        rows(&self.x, n, &tokens, &mut out.x);
        rows(&self.y, n, &tokens, &mut out.y);
        rows(&self.cluster, n, &tokens, &mut out.cluster);
        rows(&self.ctx, n, &tokens, &mut out.ctx);
        rows(&self.next, n, &tokens, &mut out.next);
        Ok(())
    }

    fn reset(&mut self, seqs: usize, seq_len: usize) {
        self.seqs = seqs;
        self.seq_len = seq_len;
        self.x.clear();
        self.y.clear();
        self.cluster.clear();
        self.ctx.clear();
        self.next.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_of_a_batch_concatenate_to_it() {
        let t = SyntheticTask::new(SyntheticConfig::default(), 1).unwrap();
        let mut b = Batch::<f64>::default();
        t.sample(&mut Rng::new(3), 5, 4, &mut b);
        let (mut whole, mut part) = (Batch::<f64>::default(), Batch::default());
        for r in [0..2, 2..2, 2..5] {
            b.shard_into(r.clone(), &mut part).unwrap();
            assert_eq!((part.seqs, part.tokens()), (r.len(), r.len() * 4));
            whole.x.extend_from_slice(&part.x);
            whole.y.extend_from_slice(&part.y);
            whole.cluster.extend_from_slice(&part.cluster);
        }
        assert_eq!(
            (whole.x, whole.y, whole.cluster),
            (b.x.clone(), b.y.clone(), b.cluster.clone())
        );
        assert!(b.shard_into(3..6, &mut part).is_err());
    }

    #[test]
    fn synthetic_task_is_deterministic_for_a_seed_and_differs_across_seeds() {
        let cfg = SyntheticConfig::default();
        let draw = |task_seed, data_seed| {
            let t = SyntheticTask::new(cfg, task_seed).unwrap();
            let mut b = Batch::<f32>::default();
            t.sample(&mut Rng::new(data_seed), 2, 8, &mut b);
            b
        };
        let (a, b, c) = (draw(1, 2), draw(1, 2), draw(2, 2));
        assert_eq!(a.x, b.x);
        assert_eq!(a.y, b.y);
        assert_eq!(a.cluster, b.cluster);
        assert_ne!(a.y, c.y);
        assert_eq!(a.x.len(), 16 * cfg.dim);
        assert_eq!(a.y.len(), 16 * cfg.out_dim);
    }

    #[test]
    fn a_sequence_mixes_the_configured_number_of_clusters_at_most() {
        let cfg = SyntheticConfig::default();
        let t = SyntheticTask::new(cfg, 5).unwrap();
        let mut b = Batch::<f64>::default();
        t.sample(&mut Rng::new(9), 20, 64, &mut b);
        for s in b.cluster.chunks(64) {
            let mut ids: Vec<u32> = s.to_vec();
            ids.sort_unstable();
            ids.dedup();
            assert!(
                ids.len() <= cfg.clusters_per_seq && ids.len() >= 2,
                "{ids:?}"
            );
        }
    }

    #[test]
    fn text_windows_carry_the_previous_bytes() {
        let text: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let t = TextTask::from_bytes(text, 3, 0.1, "alphabet".into()).unwrap();
        assert_eq!(t.split_sizes(), (900, 100));
        let mut b = Batch::<f32>::default();
        t.sample(&mut Rng::new(1), 4, 10, &mut b).unwrap();
        assert_eq!(b.next.len(), 40);
        for (i, &y) in b.next.iter().enumerate() {
            let ctx = &b.ctx[i * 3..i * 3 + 3];
            if ctx[0] != 0 {
                assert_eq!((ctx[2] - b'a' + 1) % 26, y - b'a');
                assert_eq!((ctx[0] - b'a' + 2) % 26, ctx[2] - b'a');
            }
        }
        let v = t.validation::<f32>(100, 10).unwrap();
        assert_eq!(v.seqs, 10);
        assert!(TextTask::from_bytes(vec![b'x'; 10], 3, 0.1, "tiny".into()).is_err());
    }
}
