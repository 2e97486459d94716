//! # simbal-faer
//!
//! The fast CPU backend of simbal: GEMMs on [faer](https://docs.rs/faer), row kernels split
//! across [rayon](https://docs.rs/rayon) in blocks of tokens, buffers in plain `Vec`s.
//!
//! [`Faer<T>`] (`T` = `f32` or `f64`) implements [`simbal_core::Backend`] with `Buf = Vec<T>` and
//! `IdxBuf = Vec<u32>`. Every kernel gives the results of the scalar
//! [`simbal_core::Reference`] backend to the SPEC's tolerances (indices exactly), and a training
//! step of a shape seen before allocates nothing.
//!
//! Parallelism is the caller's choice, as a faer [`Par`]: [`Faer::new`] uses every thread of the
//! current rayon pool, [`Faer::with_par`]`(Par::Seq)` runs on the calling thread only. Work runs
//! on the rayon pool the call is made from (run it inside `ThreadPool::install` to pick a pool).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod fastbackward;
mod fastexp;
mod fastroute;
mod gemm;
mod select;
mod skinny;

use core::marker::PhantomData;
use rayon::prelude::*;
use simbal_core::config::{RouterConfig, ScoreFn, SimBalConfig, WeightLayout};
use simbal_core::shape::{check_len, product};
use simbal_core::{check_gemm, Backend, BackwardSums, Gemm, LblCoef, Result, Scalar, SimbalError};
use simbal_core::{checks, ops};

pub use faer::Par;

/// Element types the faer backend computes in: `f32` and `f64` (sealed).
pub trait FaerElem:
    Scalar + faer::traits::RealField + faer::traits::Conjugate<Canonical = Self> + sealed::Sealed
{
    /// Softmax of every row of width `e` of `z` into `p` (core's `softmax_row` per row; `f32`
    /// uses a vectorised `exp`).
    #[doc(hidden)]
    fn softmax_rows(e: usize, z: &[Self], p: &mut [Self]) {
        if e == 0 {
            return;
        }
        for (zr, pr) in z.chunks_exact(e).zip(p.chunks_exact_mut(e)) {
            ops::score::softmax_row(zr, pr);
        }
    }

    /// Forward rows of a block (scores, top-k, gates), as core's `route_rows`; `f32` uses a
    /// vectorised softmax and a packed-key top-k.
    #[doc(hidden)]
    fn route_rows(
        cfg: &RouterConfig,
        z: &[Self],
        bias: Option<&[Self]>,
        p: &mut [Self],
        idx: &mut [u32],
        gates: &mut [Self],
    ) {
        select::route_rows_generic(cfg, z, bias, p, idx, gates)
    }

    /// Backward rows of a block, as core's `router_backward_rows` (`coef_row(r)`: the LBL
    /// coefficients of block row `r`); with `lse_sq`, returns the rows' `sum lse(z_t)^2` (else
    /// 0). `f32` fuses the softmax/renormalised case into one sweep.
    #[doc(hidden)]
    fn backward_rows<'c>(
        cfg: &RouterConfig,
        z: &[Self],
        p: &[Self],
        idx: &[u32],
        gates: &[Self],
        dropped: &[u32],
        dw: &[Self],
        coef_row: impl Fn(usize) -> Option<&'c [Self]>,
        z_coef: Self,
        dz: &mut [Self],
        lse_sq: bool,
    ) -> Self {
        backward_rows_generic(
            cfg, z, p, idx, gates, dropped, dw, coef_row, z_coef, dz, lse_sq,
        )
    }

    /// `sum_t lse(z_t)^2` over the rows of `z` given their softmax `p` (core's
    /// `lse_sq_sum_from_softmax`; `f32` vectorises the row maxima).
    #[doc(hidden)]
    fn lse_sq_sum_softmax(e: usize, z: &[Self], p: &[Self]) -> Self {
        ops::zloss::lse_sq_sum_from_softmax(e, z, p)
    }

    /// Calls `f(row, lse(row))` for every row of width `e` of `z`, in order (core's
    /// `logsumexp_row`; `f32` uses a vectorised `exp`).
    #[doc(hidden)]
    fn lse_rows(e: usize, z: &[Self], mut f: impl FnMut(usize, Self)) {
        if e == 0 {
            return;
        }
        for (i, zr) in z.chunks_exact(e).enumerate() {
            f(i, ops::score::logsumexp_row(zr));
        }
    }
}
impl FaerElem for f32 {
    fn lse_sq_sum_softmax(e: usize, z: &[f32], p: &[f32]) -> f32 {
        if e == 0 {
            return 0.0;
        }
        let mut s = 0.0f32;
        fastexp::lse_rows_from_softmax(e, z, p, |_, l| s += l * l);
        s
    }
    fn backward_rows<'c>(
        cfg: &RouterConfig,
        z: &[f32],
        p: &[f32],
        idx: &[u32],
        gates: &[f32],
        dropped: &[u32],
        dw: &[f32],
        coef_row: impl Fn(usize) -> Option<&'c [f32]>,
        z_coef: f32,
        dz: &mut [f32],
        lse_sq: bool,
    ) -> f32 {
        if cfg.score == ScoreFn::Softmax && cfg.renormalize {
            fastbackward::backward_rows(fastbackward::BackwardRows {
                cfg,
                z,
                p,
                idx,
                gates,
                dropped,
                dw,
                coef_row,
                z_coef,
                dz,
                lse_sq,
            })
        } else {
            backward_rows_generic(
                cfg, z, p, idx, gates, dropped, dw, coef_row, z_coef, dz, lse_sq,
            )
        }
    }
    fn route_rows(
        cfg: &RouterConfig,
        z: &[f32],
        bias: Option<&[f32]>,
        p: &mut [f32],
        idx: &mut [u32],
        gates: &mut [f32],
    ) {
        if select::packed_top_k_applies(cfg) {
            fastroute::route_rows(cfg, z, bias, p, idx, gates)
        } else {
            select::route_rows_generic(cfg, z, bias, p, idx, gates)
        }
    }
    fn softmax_rows(e: usize, z: &[f32], p: &mut [f32]) {
        if e > 0 {
            fastexp::softmax_rows(e, z, p);
        }
    }
    fn lse_rows(e: usize, z: &[f32], f: impl FnMut(usize, f32)) {
        if e > 0 {
            fastexp::lse_rows(e, z, f);
        }
    }
}
impl FaerElem for f64 {}

/// Backward rows of a block through core's kernel; with `lse_sq`, returns the rows'
/// `sum lse(z_t)^2` (else 0). With softmax scores each row's `lse` is taken once (vectorised in
/// `f32`) for both the z-loss term, added after core's kernel exactly as core adds it
/// (`dz += z_coef lse(z) p`, last), and the sum.
fn backward_rows_generic<'c, T: FaerElem>(
    cfg: &RouterConfig,
    z: &[T],
    p: &[T],
    idx: &[u32],
    gates: &[T],
    dropped: &[u32],
    dw: &[T],
    coef_row: impl Fn(usize) -> Option<&'c [T]>,
    z_coef: T,
    dz: &mut [T],
    lse_sq: bool,
) -> T {
    let e = cfg.experts;
    if cfg.score != ScoreFn::Softmax {
        ops::router::router_backward_rows(cfg, z, p, idx, gates, dropped, dw, coef_row, z_coef, dz);
        return if lse_sq { lse_sq_sum(e, z) } else { T::zero() };
    }
    ops::router::router_backward_rows(cfg, z, p, idx, gates, dropped, dw, coef_row, T::zero(), dz);
    let mut sum = T::zero();
    if z_coef != T::zero() || lse_sq {
        T::lse_rows(e, z, |r, l| {
            sum += l * l;
            if z_coef != T::zero() {
                let c = z_coef * l;
                let rows = dz[r * e..(r + 1) * e]
                    .iter_mut()
                    .zip(&p[r * e..(r + 1) * e]);
                for (dv, &pv) in rows {
                    *dv += c * pv;
                }
            }
        });
    }
    if lse_sq {
        sum
    } else {
        T::zero()
    }
}

/// `sum_t lse(Z_t)^2` over the rows of `z`, added in row order.
fn lse_sq_sum<T: FaerElem>(e: usize, z: &[T]) -> T {
    let mut s = T::zero();
    T::lse_rows(e, z, |_, l| s += l * l);
    s
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The faer + rayon CPU backend in `T` (`f32` or `f64`).
///
/// Route a small batch, then take the backward pass with SimBal on the router weight:
///
/// ```
/// use simbal_core::{orthogonal_init, LossConfig, Router, RouterConfig, WeightLayout};
/// use simbal_faer::Faer;
///
/// let (n, d, e, k) = (64, 32, 8, 2);
/// let x: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 23) as f32 - 11.0) / 11.0).collect();
/// let r: Vec<f32> = orthogonal_init(WeightLayout::DxE, d, e, 7)?;
/// let mut router = Router::new(Faer::<f32>::new(), RouterConfig::new(e, k))?;
///
/// router.forward(&x, &r, None, n, d)?;
/// let idx = router.indices()?;
/// assert_eq!(idx.len(), n * k);
/// assert!(idx.iter().all(|&i| (i as usize) < e));
/// // Gates are renormalised over the chosen experts: each token's gates sum to 1.
/// let gates = router.gates()?;
/// assert!(gates.chunks(k).all(|w| (w.iter().sum::<f32>() - 1.0).abs() < 1e-5));
///
/// let dw = vec![1.0f32; n * k];
/// let losses = router.backward(&x, &r, &dw, &LossConfig::simbal(), None)?;
/// // Orthogonal init: SimBal = 0.1 * ||R^T R - I||_1 starts at (almost) 0.
/// assert!(losses.simbal < 1e-4);
/// assert_eq!(router.dr()?.len(), d * e);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faer<T> {
    par: Par,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Faer<T> {
    /// The backend on every thread of the current rayon pool (`Par::rayon(0)`).
    pub fn new() -> Self {
        Self::with_par(Par::rayon(0))
    }

    /// The backend with the given parallelism: `Par::Seq` stays on the calling thread,
    /// `Par::rayon(n)` splits work into at most `n` concurrent blocks (0: all rayon threads).
    pub fn with_par(par: Par) -> Self {
        Self {
            par,
            _elem: PhantomData,
        }
    }

    /// The parallelism this backend uses.
    pub fn par(&self) -> Par {
        self.par
    }

    /// How many blocks work is split into at most.
    fn threads(&self) -> usize {
        self.par.degree().max(1)
    }

    /// Rows per block for a row kernel over `n` rows of `width` elements, or `None` to run
    /// sequentially (one thread, or too little work to be worth a split).
    fn row_block(&self, n: usize, width: usize) -> Option<usize> {
        let threads = self.threads();
        if threads <= 1 {
            return None;
        }
        let min_rows = MIN_BLOCK_ELEMS.div_ceil(width.max(1)).max(1);
        let blocks = threads.min(n / min_rows);
        if blocks <= 1 {
            return None;
        }
        Some(n.div_ceil(blocks))
    }
}

/// The inputs of the backward row kernel, as slices.
struct BackwardRows<'a, T> {
    z: &'a [T],
    p: &'a [T],
    idx: &'a [u32],
    gates: &'a [T],
    dropped: &'a [u32],
    dw: &'a [T],
    /// LBL coefficients (`groups x E`) and tokens per group.
    lbl: Option<(&'a [T], usize)>,
    z_coef: T,
}

/// Larger of two values, NaN if either is NaN.
fn max_nan<T: Scalar>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::nan()
    } else if b > a {
        b
    } else {
        a
    }
}

/// Least rows per task of the fused logits-and-routing forward.
const FUSED_MIN_ROWS: usize = 64;

impl<T: FaerElem> Faer<T> {
    /// The backward row kernel over blocks of rows, each also reducing what is asked: its
    /// `sum lse^2` (`lse_sq`) and `max |dz|` (`max_dz`). With `lse_sq` the blocks are the
    /// [`REDUCE_PARTS`] fixed row ranges, summed in order, so the value does not depend on the
    /// thread count; otherwise one block per thread. Returns `(sum lse^2, max |dz|)` (0 where
    /// not asked).
    fn backward_blocks(
        &self,
        cfg: &RouterConfig,
        n: usize,
        x: &BackwardRows<'_, T>,
        dz: &mut [T],
        lse_sq: bool,
        max_dz: bool,
    ) -> (T, T) {
        let (e, k) = (cfg.experts, cfg.k);
        if n == 0 || e == 0 {
            return (T::zero(), T::zero());
        }
        let fixed = n.div_ceil(REDUCE_PARTS);
        let par = self.row_block(n, e);
        let rows = if lse_sq {
            fixed
        } else {
            par.unwrap_or(n).max(fixed)
        };
        // Block kernel on rows starting at `r0`; LBL coefficient rows follow the global row.
        let block = |r0: usize,
                     z: &[T],
                     p: &[T],
                     i: &[u32],
                     w: &[T],
                     d: &[u32],
                     g: &[T],
                     dz: &mut [T]|
         -> (T, T) {
            let coef_row = |r: usize| {
                x.lbl.map(|(c, len)| {
                    let grp = (r0 + r) / len;
                    &c[grp * e..(grp + 1) * e]
                })
            };
            let l = T::backward_rows(cfg, z, p, i, w, d, g, coef_row, x.z_coef, dz, lse_sq);
            let m = if max_dz { max_abs_lanes(dz) } else { T::zero() };
            (l, m)
        };
        let mut parts = [(T::zero(), T::zero()); REDUCE_PARTS];
        if par.is_some() {
            (
                x.z.par_chunks(rows * e),
                x.p.par_chunks(rows * e),
                x.idx.par_chunks(rows * k),
                x.gates.par_chunks(rows * k),
                x.dropped.par_chunks(rows * k),
                x.dw.par_chunks(rows * k),
                dz.par_chunks_mut(rows * e),
                parts.par_iter_mut(),
            )
                .into_par_iter()
                .enumerate()
                .for_each(|(b, (z, p, i, w, d, g, dz, out))| {
                    *out = block(b * rows, z, p, i, w, d, g, dz)
                });
        } else {
            for ((b, dz), out) in dz.chunks_mut(rows * e).enumerate().zip(parts.iter_mut()) {
                let (r0, r1) = (b * rows, (b * rows + dz.len() / e));
                let (re, rk) = (r0 * e..r1 * e, r0 * k..r1 * k);
                *out = block(
                    r0,
                    &x.z[re.clone()],
                    &x.p[re],
                    &x.idx[rk.clone()],
                    &x.gates[rk.clone()],
                    &x.dropped[rk.clone()],
                    &x.dw[rk],
                    dz,
                );
            }
        }
        parts
            .iter()
            .fold((T::zero(), T::zero()), |(l, m), &(pl, pm)| {
                (l + pl, max_nan(m, pm))
            })
    }

    /// `f` over [`REDUCE_PARTS`] fixed row blocks of `a` and `b` (`n x e` each), the partial
    /// results added in block order: the same value on any number of threads.
    fn row_partial_sums(
        &self,
        n: usize,
        e: usize,
        f: impl Fn(&[T], &[T]) -> T + Sync,
        a: &[T],
        b: &[T],
    ) -> T {
        if n == 0 || e == 0 {
            return T::zero();
        }
        let chunk = n.div_ceil(REDUCE_PARTS) * e;
        let mut parts = [T::zero(); REDUCE_PARTS];
        if self.row_block(n, e).is_some() {
            a.par_chunks(chunk)
                .zip(b.par_chunks(chunk))
                .zip(parts.par_iter_mut())
                .for_each(|((ab, bb), s)| *s = f(ab, bb));
        } else {
            for ((ab, bb), s) in a.chunks(chunk).zip(b.chunks(chunk)).zip(parts.iter_mut()) {
                *s = f(ab, bb);
            }
        }
        parts.iter().fold(T::zero(), |acc, &s| acc + s)
    }
}

impl<T> Default for Faer<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Least elements a rayon task of a row kernel should get.
const MIN_BLOCK_ELEMS: usize = 1 << 13;
/// Least elements a finite check splits across threads.
const SCAN_MIN_PAR: usize = 1 << 18;
/// Fixed number of partial sums in reductions, so results do not depend on the thread count.
const REDUCE_PARTS: usize = 64;

/// Position (plus `offset`) of the first non-finite value of `x`. Scans blocks without
/// branching on each element, so the common all-finite case runs at memory speed.
fn first_non_finite<T: Scalar>(x: &[T], offset: usize) -> Option<usize> {
    const BLOCK: usize = 1024;
    for (bi, block) in x.chunks(BLOCK).enumerate() {
        let finite = block.iter().fold(true, |ok, v| ok & v.is_finite());
        if !finite {
            let i = block.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Some(offset + bi * BLOCK + i);
        }
    }
    None
}

/// Largest `|x|`, NaN if any element is NaN, 0 when empty (core's `max_abs`), in lanes the
/// compiler vectorises: no early exit, NaN recorded in a flag per lane.
fn max_abs_lanes<T: Scalar>(x: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let mut nan = [false; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for ((m, f), &v) in acc.iter_mut().zip(nan.iter_mut()).zip(c) {
            let a = v.abs();
            *f |= v.is_nan();
            *m = if a > *m { a } else { *m };
        }
    }
    let mut m = T::zero();
    let mut any_nan = nan.iter().any(|&f| f);
    for &v in acc.iter().chain(chunks.remainder()) {
        any_nan |= v.is_nan();
        let a = v.abs();
        if a > m {
            m = a;
        }
    }
    if any_nan {
        T::nan()
    } else {
        m
    }
}

impl<T: FaerElem> Backend for Faer<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type IdxBuf = Vec<u32>;

    fn name(&self) -> String {
        format!("faer-{}", T::NAME)
    }
    simbal_core::host_vec_memory!(T);

    fn gemm(&self, g: &Gemm, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        // Overflow-safe sizes first: `Gemm::lens` multiplies without checks.
        product("GEMM operand A", g.m, g.k)?;
        product("GEMM operand B", g.k, g.n)?;
        product("GEMM operand C", g.m, g.n)?;
        check_gemm(g, a.len(), b.len(), c.len())?;
        gemm::gemm(g, self.threads(), a, b, c);
        Ok(())
    }

    fn route_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Vec<T>,
        bias: Option<&Vec<T>>,
        p: &mut Vec<T>,
        idx: &mut Vec<u32>,
        gates: &mut Vec<T>,
    ) -> Result<()> {
        checks::route_rows(
            cfg,
            n,
            z.len(),
            bias.map(|b| b.len()),
            p.len(),
            idx.len(),
            gates.len(),
        )?;
        let (e, k) = (cfg.experts, cfg.k);
        let bias = bias.map(|b| b.as_slice());
        match self.row_block(n, e) {
            None => T::route_rows(cfg, z, bias, p, idx, gates),
            Some(rows) => (
                z.par_chunks(rows * e),
                p.par_chunks_mut(rows * e),
                idx.par_chunks_mut(rows * k),
                gates.par_chunks_mut(rows * k),
            )
                .into_par_iter()
                .for_each(|(z, p, idx, gates)| T::route_rows(cfg, z, bias, p, idx, gates)),
        }
        Ok(())
    }

    fn dispatch(
        &self,
        cfg: &RouterConfig,
        n: usize,
        idx: &Vec<u32>,
        gates: &mut Vec<T>,
        dropped: &mut Vec<u32>,
        counts: &mut Vec<u32>,
        order: &mut Vec<u32>,
        offsets: &mut Vec<u32>,
    ) -> Result<()> {
        checks::dispatch(
            cfg,
            n,
            idx.len(),
            gates.len(),
            dropped.len(),
            counts.len(),
            order.len(),
            offsets.len(),
        )?;
        checks::expert_indices(cfg.experts, idx)?;
        ops::router::dispatch(cfg, n, idx, gates, dropped, counts, order, offsets);
        Ok(())
    }

    fn router_backward_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Vec<T>,
        p: &Vec<T>,
        idx: &Vec<u32>,
        gates: &Vec<T>,
        dropped: &Vec<u32>,
        dw: &Vec<T>,
        lbl: Option<LblCoef<'_, Vec<T>>>,
        z_coef: T,
        dz: &mut Vec<T>,
    ) -> Result<()> {
        // The same sweep with no reductions asked.
        self.router_backward_rows_and_sums(
            cfg, n, z, p, idx, gates, dropped, dw, lbl, z_coef, dz, false, false,
        )
        .map(|_| ())
    }

    fn router_backward_rows_and_sums(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Vec<T>,
        p: &Vec<T>,
        idx: &Vec<u32>,
        gates: &Vec<T>,
        dropped: &Vec<u32>,
        dw: &Vec<T>,
        lbl: Option<LblCoef<'_, Vec<T>>>,
        z_coef: T,
        dz: &mut Vec<T>,
        lse_sq_sum: bool,
        max_abs_dz: bool,
    ) -> Result<BackwardSums<T>> {
        checks::router_backward_rows(
            cfg,
            n,
            z.len(),
            p.len(),
            idx.len(),
            gates.len(),
            dropped.len(),
            dw.len(),
            lbl.as_ref().map(|l| (l.group_len, l.coef.len())),
            dz.len(),
        )?;
        checks::expert_indices(cfg.experts, idx)?;
        let lbl = lbl.map(|l| (l.coef.as_slice(), l.group_len));
        let rows = BackwardRows {
            z,
            p,
            idx,
            gates,
            dropped,
            dw,
            lbl,
            z_coef,
        };
        let (lse, max) = self.backward_blocks(cfg, n, &rows, dz, lse_sq_sum, max_abs_dz);
        Ok(BackwardSums {
            lse_sq_sum: lse_sq_sum.then_some(lse),
            max_abs_dz: max_abs_dz.then_some(max),
        })
    }

    fn logits_and_route_rows(
        &self,
        cfg: &RouterConfig,
        g: &Gemm,
        x: &Vec<T>,
        r: &Vec<T>,
        bias: Option<&Vec<T>>,
        z: &mut Vec<T>,
        p: &mut Vec<T>,
        idx: &mut Vec<u32>,
        gates: &mut Vec<T>,
        max_abs_z: bool,
    ) -> Result<Option<T>> {
        product("GEMM operand A", g.m, g.k)?;
        product("GEMM operand B", g.k, g.n)?;
        product("GEMM operand C", g.m, g.n)?;
        check_gemm(g, x.len(), r.len(), z.len())?;
        let n = g.m;
        checks::route_rows(
            cfg,
            n,
            z.len(),
            bias.map(|b| b.len()),
            p.len(),
            idx.len(),
            gates.len(),
        )?;
        let (e, k, kd) = (cfg.experts, cfg.k, g.k);
        let blocks = self.threads().min(n / FUSED_MIN_ROWS).max(1);
        if g.trans_a || g.n != e || kd == 0 || blocks == 1 {
            // Not the router's logits GEMM, or nothing to split: the separate calls.
            self.gemm(g, x, r, z)?;
            let m = max_abs_z.then(|| max_abs_lanes(z));
            self.route_rows(cfg, n, z, bias, p, idx, gates)?;
            return Ok(m);
        }
        // Each task computes the logits of its rows, then routes them while they are in cache.
        let bias = bias.map(|b| b.as_slice());
        let rows = n.div_ceil(blocks).div_ceil(gemm::ALIGN) * gemm::ALIGN;
        let m = (
            x.par_chunks(rows * kd),
            z.par_chunks_mut(rows * e),
            p.par_chunks_mut(rows * e),
            idx.par_chunks_mut(rows * k),
            gates.par_chunks_mut(rows * k),
        )
            .into_par_iter()
            .map(|(xb, zb, pb, ib, wb)| {
                let mut gb = *g;
                gb.m = zb.len() / e;
                gemm::gemm(&gb, 1, xb, r, zb);
                let m = if max_abs_z {
                    max_abs_lanes(zb)
                } else {
                    T::zero()
                };
                T::route_rows(cfg, zb, bias, pb, ib, wb);
                m
            })
            .reduce(T::zero, max_nan);
        Ok(max_abs_z.then_some(m))
    }

    fn group_column_sums(
        &self,
        n: usize,
        cols: usize,
        group_len: usize,
        a: &Vec<T>,
        out: &mut Vec<T>,
    ) -> Result<()> {
        checks::group(group_len, n)?;
        check_len("matrix", product("matrix", n, cols)?, a.len())?;
        check_len("group sums", (n / group_len) * cols, out.len())?;
        let groups = n / group_len;
        if groups >= 2 && cols > 0 && self.row_block(n, cols).is_some() {
            // One task per group (a sequence); each sums its own rows.
            a.par_chunks(group_len * cols)
                .zip(out.par_chunks_mut(cols))
                .for_each(|(rows, o)| ops::reduce::group_column_sums(cols, group_len, rows, o));
        } else {
            ops::reduce::group_column_sums(cols, group_len, a, out);
        }
        Ok(())
    }

    fn group_counts(
        &self,
        n: usize,
        k: usize,
        e: usize,
        group_len: usize,
        idx: &Vec<u32>,
        dropped: &Vec<u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        checks::group(group_len, n)?;
        let nk = product("indices", n, k)?;
        check_len("indices", nk, idx.len())?;
        check_len("dropped flags", nk, dropped.len())?;
        check_len(
            "group counts",
            product("group counts", n / group_len, e)?,
            out.len(),
        )?;
        ops::reduce::group_counts(k, e, group_len, idx, dropped, out);
        Ok(())
    }

    fn lse_sq_sum(&self, n: usize, e: usize, z: &Vec<T>) -> Result<T> {
        check_len("logits", product("logits", n, e)?, z.len())?;
        Ok(self.row_partial_sums(n, e, |zb, _| lse_sq_sum(e, zb), z, z))
    }

    fn lse_sq_sum_scored(
        &self,
        score: ScoreFn,
        n: usize,
        e: usize,
        z: &Vec<T>,
        p: &Vec<T>,
    ) -> Result<T> {
        let ne = product("logits", n, e)?;
        check_len("logits", ne, z.len())?;
        check_len("scores", ne, p.len())?;
        if score != ScoreFn::Softmax {
            return self.lse_sq_sum(n, e, z);
        }
        Ok(self.row_partial_sums(n, e, |zb, pb| T::lse_sq_sum_softmax(e, zb, pb), z, p))
    }

    fn simbal_residual(&self, cfg: &SimBalConfig, e: usize, gram: &mut Vec<T>) -> Result<T> {
        check_len("Gram matrix", product("Gram matrix", e, e)?, gram.len())?;
        Ok(ops::simbal::simbal_residual(cfg, e, gram))
    }

    fn normalize_columns(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        r: &Vec<T>,
        norms: &mut Vec<T>,
        rn: &mut Vec<T>,
    ) -> Result<()> {
        let de = product("router weight", d, e)?;
        check_len("router weight", de, r.len())?;
        check_len("column norms", e, norms.len())?;
        check_len("normalised weight", de, rn.len())?;
        ops::simbal::column_norms(layout, d, e, r, norms);
        ops::simbal::normalize_columns(layout, d, e, r, norms, rn);
        Ok(())
    }

    fn scale_free_project(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        rn: &Vec<T>,
        norms: &Vec<T>,
        g: &Vec<T>,
        grad: &mut Vec<T>,
    ) -> Result<()> {
        let de = product("router weight", d, e)?;
        check_len("normalised weight", de, rn.len())?;
        check_len("column norms", e, norms.len())?;
        check_len("normalised gradient", de, g.len())?;
        check_len("router gradient", de, grad.len())?;
        ops::simbal::scale_free_project(layout, d, e, rn, norms, g, grad, true);
        Ok(())
    }

    fn max_abs(&self, buf: &Vec<T>) -> Result<T> {
        Ok(max_abs_lanes(buf))
    }

    fn check_finite(&self, what: &'static str, cols: usize, buf: &Vec<T>) -> Result<()> {
        // A scan runs at memory speed: below SCAN_MIN_PAR elements a fork-join costs more
        // than it saves.
        let par = if buf.len() < SCAN_MIN_PAR {
            None
        } else {
            self.row_block(buf.len(), 1)
        };
        let bad = match par {
            None => first_non_finite(buf, 0),
            Some(chunk) => buf
                .par_chunks(chunk)
                .enumerate()
                .filter_map(|(ci, c)| first_non_finite(c, ci * chunk))
                .min(),
        };
        match bad {
            None => Ok(()),
            Some(at) => {
                let cols = cols.max(1);
                Err(SimbalError::NonFinite {
                    what,
                    row: at / cols,
                    col: at % cols,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::max_abs_lanes;

    #[test]
    fn max_abs_matches_core_on_every_length_and_nan_position() {
        for len in 0..40 {
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 23) as f32 - 11.5).collect();
            assert_eq!(max_abs_lanes(&x), simbal_core::ops::reduce::max_abs(&x));
            for at in 0..len {
                let mut y = x.clone();
                y[at] = f32::NAN;
                assert!(max_abs_lanes(&y).is_nan(), "len {len}, NaN at {at}");
                y[at] = f32::NEG_INFINITY;
                assert_eq!(max_abs_lanes(&y), f32::INFINITY);
            }
        }
    }
}
