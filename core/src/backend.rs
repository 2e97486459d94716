//! The [`Backend`] trait: memory primitives and one GEMM are required; every kernel and every op
//! has a default built from them (burn's pattern), so a new backend works at once and overrides
//! only what it makes faster.
//!
//! Layers, bottom up:
//! 1. **memory** (required): allocate, upload, download, overwrite, length; host backends also lend
//!    their buffers as slices ([`Backend::host`]), which makes every default zero-copy for them;
//! 2. **GEMM** (required): [`Backend::gemm`];
//! 3. **kernels** (defaults run the reference kernels of [`crate::ops`] on the host): row-wise
//!    routing and backward, dispatch, reductions, the SimBal element-wise pass;
//! 4. **ops** live in [`crate::router`], composed from layers 1-3.
//!
//! Every method validates the lengths of its buffers and returns a typed error instead of
//! panicking.

use crate::checks;
use crate::config::{LblConfig, RouterConfig, SimBalConfig, WeightLayout};
use crate::error::Result;
use crate::ops::{self, gemm::Gemm};
use crate::scalar::Scalar;
use crate::shape::check_len;
use crate::stage::{stage_in, stage_out, Elems, Idxs};
use alloc::string::String;

/// Coefficients of the LBL's dense gradient, `dL/dp_te = coef[b(t), e]`, one row per group of
/// `group_len` consecutive tokens (one group for micro-batch and global-batch levels).
#[derive(Debug)]
pub struct LblCoef<'a, Buf> {
    /// `B x E` coefficients.
    pub coef: &'a Buf,
    /// Tokens per group; divides `N`.
    pub group_len: usize,
}

/// The reductions [`Backend::router_backward_rows_and_sums`] returns with `dz`, each `Some` when
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardSums<T> {
    /// `sum_t lse(z_t)^2` (the z-loss before its scale).
    pub lse_sq_sum: Option<T>,
    /// `max |dz|`, NaN if any `dz` is NaN (the router's validation of `dz`).
    pub max_abs_dz: Option<T>,
}

/// A compute backend for simbal. See the module docs for the layering.
pub trait Backend {
    /// Element type.
    type Elem: Scalar;
    /// A buffer of `Elem`, wherever the backend keeps it.
    type Buf;
    /// A buffer of `u32` (indices, counts, flags).
    type IdxBuf;

    /// Human-readable name, e.g. `"faer-f32"`.
    fn name(&self) -> String;

    // ---- memory primitives -------------------------------------------------------------------

    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `host`.
    fn upload(&self, host: &[Self::Elem]) -> Result<Self::Buf>;
    /// Copies `buf` into `host` (same length).
    fn download(&self, buf: &Self::Buf, host: &mut [Self::Elem]) -> Result<()>;
    /// Overwrites `buf` with `host` (same length).
    fn write(&self, buf: &mut Self::Buf, host: &[Self::Elem]) -> Result<()>;
    /// Length of `buf` in elements.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// An index buffer of `len` zeros.
    fn idx_zeros(&self, len: usize) -> Result<Self::IdxBuf>;
    /// An index buffer holding a copy of `host`.
    fn idx_upload(&self, host: &[u32]) -> Result<Self::IdxBuf>;
    /// Copies `buf` into `host` (same length).
    fn idx_download(&self, buf: &Self::IdxBuf, host: &mut [u32]) -> Result<()>;
    /// Overwrites `buf` with `host` (same length).
    fn idx_write(&self, buf: &mut Self::IdxBuf, host: &[u32]) -> Result<()>;
    /// Length of `buf`.
    fn idx_len(&self, buf: &Self::IdxBuf) -> usize;

    /// Whether buffers live in host memory and are lent by [`Backend::host`] and friends.
    fn is_host(&self) -> bool {
        false
    }
    /// The buffer as a host slice, for host backends.
    fn host<'a>(&self, _buf: &'a Self::Buf) -> Option<&'a [Self::Elem]> {
        None
    }
    /// The buffer as a mutable host slice, for host backends.
    fn host_mut<'a>(&self, _buf: &'a mut Self::Buf) -> Option<&'a mut [Self::Elem]> {
        None
    }
    /// The index buffer as a host slice, for host backends.
    fn idx_host<'a>(&self, _buf: &'a Self::IdxBuf) -> Option<&'a [u32]> {
        None
    }
    /// The index buffer as a mutable host slice, for host backends.
    fn idx_host_mut<'a>(&self, _buf: &'a mut Self::IdxBuf) -> Option<&'a mut [u32]> {
        None
    }

    // ---- compute primitive -------------------------------------------------------------------

    /// `C = alpha op(A) op(B) + beta C` (see [`Gemm`]). Implementations check the lengths with
    /// [`check_gemm`].
    fn gemm(&self, g: &Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf) -> Result<()>;

    // ---- kernels (defaults: the reference kernels on the host) -------------------------------

    /// Router forward rows: scores `p`, indices `idx`, gates `gates` from logits `z` (`n x E`).
    fn route_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Self::Buf,
        bias: Option<&Self::Buf>,
        p: &mut Self::Buf,
        idx: &mut Self::IdxBuf,
        gates: &mut Self::Buf,
    ) -> Result<()> {
        checks::route_rows(
            cfg,
            n,
            self.len(z),
            bias.map(|b| self.len(b)),
            self.len(p),
            self.idx_len(idx),
            self.len(gates),
        )?;
        let z = stage_in::<_, Elems>(self, z)?;
        let bias = match bias {
            Some(b) => Some(stage_in::<_, Elems>(self, b)?),
            None => None,
        };
        let mut p = stage_out::<_, Elems>(self, p, false)?;
        let mut idx = stage_out::<_, Idxs>(self, idx, false)?;
        let mut gates = stage_out::<_, Elems>(self, gates, false)?;
        ops::router::route_rows(
            cfg,
            &z,
            bias.as_deref(),
            p.slice(),
            idx.slice(),
            gates.slice(),
        );
        p.finish(self)?;
        idx.finish(self)?;
        gates.finish(self)
    }

    /// Capacity dropping and the dispatch plan (see [`ops::router::dispatch`]).
    fn dispatch(
        &self,
        cfg: &RouterConfig,
        n: usize,
        idx: &Self::IdxBuf,
        gates: &mut Self::Buf,
        dropped: &mut Self::IdxBuf,
        counts: &mut Self::IdxBuf,
        order: &mut Self::IdxBuf,
        offsets: &mut Self::IdxBuf,
    ) -> Result<()> {
        checks::dispatch(
            cfg,
            n,
            self.idx_len(idx),
            self.len(gates),
            self.idx_len(dropped),
            self.idx_len(counts),
            self.idx_len(order),
            self.idx_len(offsets),
        )?;
        let idx = stage_in::<_, Idxs>(self, idx)?;
        checks::expert_indices(cfg.experts, &idx)?;
        let mut gates = stage_out::<_, Elems>(self, gates, true)?;
        let mut dropped = stage_out::<_, Idxs>(self, dropped, false)?;
        let mut counts = stage_out::<_, Idxs>(self, counts, false)?;
        let mut order = stage_out::<_, Idxs>(self, order, false)?;
        let mut offsets = stage_out::<_, Idxs>(self, offsets, false)?;
        ops::router::dispatch(
            cfg,
            n,
            &idx,
            gates.slice(),
            dropped.slice(),
            counts.slice(),
            order.slice(),
            offsets.slice(),
        );
        gates.finish(self)?;
        dropped.finish(self)?;
        counts.finish(self)?;
        order.finish(self)?;
        offsets.finish(self)
    }

    /// The router's forward in one call: the logits GEMM `g` (`Z = X R`, or `X W^T`) into `z`,
    /// then [`Backend::route_rows`] on them (`n = g.m` tokens). With `max_abs_z` it also returns
    /// `max |Z|` (NaN if any is NaN), for the router's validation. A backend may fuse these (the
    /// faer backend routes each block of rows right after computing its logits, while they are
    /// in cache); the default makes the three calls.
    fn logits_and_route_rows(
        &self,
        cfg: &RouterConfig,
        g: &Gemm,
        x: &Self::Buf,
        r: &Self::Buf,
        bias: Option<&Self::Buf>,
        z: &mut Self::Buf,
        p: &mut Self::Buf,
        idx: &mut Self::IdxBuf,
        gates: &mut Self::Buf,
        max_abs_z: bool,
    ) -> Result<Option<Self::Elem>> {
        self.gemm(g, x, r, z)?;
        let m = if max_abs_z {
            Some(self.max_abs(z)?)
        } else {
            None
        };
        self.route_rows(cfg, g.m, z, bias, p, idx, gates)?;
        Ok(m)
    }

    /// [`Backend::router_backward_rows`] with the reductions the router needs from the same
    /// rows: `sum_t lse(z_t)^2` when `lse_sq_sum` (as [`Backend::lse_sq_sum_scored`]) and
    /// `max |dz|` when `max_abs_dz`. A backend may compute them in the same sweep; the default
    /// makes the separate calls.
    fn router_backward_rows_and_sums(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Self::Buf,
        p: &Self::Buf,
        idx: &Self::IdxBuf,
        gates: &Self::Buf,
        dropped: &Self::IdxBuf,
        dw: &Self::Buf,
        lbl: Option<LblCoef<'_, Self::Buf>>,
        z_coef: Self::Elem,
        dz: &mut Self::Buf,
        lse_sq_sum: bool,
        max_abs_dz: bool,
    ) -> Result<BackwardSums<Self::Elem>> {
        self.router_backward_rows(cfg, n, z, p, idx, gates, dropped, dw, lbl, z_coef, dz)?;
        let lse_sq_sum = if lse_sq_sum {
            Some(self.lse_sq_sum_scored(cfg.score, n, cfg.experts, z, p)?)
        } else {
            None
        };
        let max_abs_dz = if max_abs_dz {
            Some(self.max_abs(dz)?)
        } else {
            None
        };
        Ok(BackwardSums {
            lse_sq_sum,
            max_abs_dz,
        })
    }

    /// Router backward rows: `dz` (`n x E`) from the gate gradient and the dense loss terms (see
    /// [`ops::router::router_backward_rows`]); `z_coef = beta * 2 / N` (0 without z-loss).
    fn router_backward_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &Self::Buf,
        p: &Self::Buf,
        idx: &Self::IdxBuf,
        gates: &Self::Buf,
        dropped: &Self::IdxBuf,
        dw: &Self::Buf,
        lbl: Option<LblCoef<'_, Self::Buf>>,
        z_coef: Self::Elem,
        dz: &mut Self::Buf,
    ) -> Result<()> {
        checks::router_backward_rows(
            cfg,
            n,
            self.len(z),
            self.len(p),
            self.idx_len(idx),
            self.len(gates),
            self.idx_len(dropped),
            self.len(dw),
            lbl.as_ref().map(|l| (l.group_len, self.len(l.coef))),
            self.len(dz),
        )?;
        let e = cfg.experts;
        let lbl = match lbl {
            Some(l) => Some((stage_in::<_, Elems>(self, l.coef)?, l.group_len)),
            None => None,
        };
        let idx = stage_in::<_, Idxs>(self, idx)?;
        checks::expert_indices(e, &idx)?;
        let z = stage_in::<_, Elems>(self, z)?;
        let p = stage_in::<_, Elems>(self, p)?;
        let gates = stage_in::<_, Elems>(self, gates)?;
        let dropped = stage_in::<_, Idxs>(self, dropped)?;
        let dw = stage_in::<_, Elems>(self, dw)?;
        let mut dz = stage_out::<_, Elems>(self, dz, false)?;
        let coef_row = |r: usize| {
            lbl.as_ref()
                .map(|(c, len)| &c[(r / *len) * e..(r / *len + 1) * e])
        };
        ops::router::router_backward_rows(
            cfg,
            &z,
            &p,
            &idx,
            &gates,
            &dropped,
            &dw,
            coef_row,
            z_coef,
            dz.slice(),
        );
        dz.finish(self)
    }

    /// Per-group column sums: `out[b, c] = sum over rows t of group b of a[t, c]`, groups of
    /// `group_len` consecutive rows of the `n x cols` matrix `a`.
    fn group_column_sums(
        &self,
        n: usize,
        cols: usize,
        group_len: usize,
        a: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        crate::config::check_seq_len(group_len, n)?;
        check_len("matrix", n.saturating_mul(cols), self.len(a))?;
        check_len(
            "group sums",
            (n / group_len).saturating_mul(cols),
            self.len(out),
        )?;
        let a = stage_in::<_, Elems>(self, a)?;
        let mut o = stage_out::<_, Elems>(self, out, false)?;
        ops::reduce::group_column_sums(cols, group_len, &a, o.slice());
        o.finish(self)
    }

    /// Per-group expert counts of kept assignments: `out[b, e]` over groups of `group_len` tokens.
    fn group_counts(
        &self,
        n: usize,
        k: usize,
        e: usize,
        group_len: usize,
        idx: &Self::IdxBuf,
        dropped: &Self::IdxBuf,
        out: &mut Self::IdxBuf,
    ) -> Result<()> {
        crate::config::check_seq_len(group_len, n)?;
        check_len("indices", n.saturating_mul(k), self.idx_len(idx))?;
        check_len("dropped flags", n.saturating_mul(k), self.idx_len(dropped))?;
        check_len(
            "group counts",
            (n / group_len).saturating_mul(e),
            self.idx_len(out),
        )?;
        let idx = stage_in::<_, Idxs>(self, idx)?;
        let dropped = stage_in::<_, Idxs>(self, dropped)?;
        let mut o = stage_out::<_, Idxs>(self, out, false)?;
        ops::reduce::group_counts(k, e, group_len, &idx, &dropped, o.slice());
        o.finish(self)
    }

    /// LBL from per-group kept counts and score sums (`groups x E` each, groups as in
    /// `scales`): writes the gradient coefficients `dL/dp_te` of each group into `coef` and
    /// returns the loss value (see [`ops::lbl::lbl_value_and_coef`]).
    fn lbl_coefficients(
        &self,
        cfg: &LblConfig,
        e: usize,
        scales: &ops::lbl::LblScales,
        counts: &Self::IdxBuf,
        sums: &Self::Buf,
        coef: &mut Self::Buf,
    ) -> Result<Self::Elem> {
        let len = scales.groups.saturating_mul(e);
        check_len("LBL group counts", len, self.idx_len(counts))?;
        check_len("LBL group sums", len, self.len(sums))?;
        check_len("LBL coefficients", len, self.len(coef))?;
        let counts = stage_in::<_, Idxs>(self, counts)?;
        let sums = stage_in::<_, Elems>(self, sums)?;
        let mut c = stage_out::<_, Elems>(self, coef, false)?;
        let v =
            ops::lbl::lbl_value_and_coef(cfg, e, scales, |be| counts[be] as f64, &sums, c.slice());
        c.finish(self)?;
        Ok(v)
    }

    /// `sum_t lse(z_t)^2` over the `n x e` logits.
    fn lse_sq_sum(&self, n: usize, e: usize, z: &Self::Buf) -> Result<Self::Elem> {
        check_len("logits", n.saturating_mul(e), self.len(z))?;
        let z = stage_in::<_, Elems>(self, z)?;
        Ok(ops::zloss::lse_sq_sum(e, &z))
    }

    /// `sum_t lse(z_t)^2` as [`Backend::lse_sq_sum`], given also the scores `p` that
    /// [`Backend::route_rows`] wrote for these logits under `score`. A backend may take `lse`
    /// from them instead of summing `E` exponentials per row (for softmax the largest logit `m`
    /// has `p = 1 / sum`, so `lse = m - ln(max p)`); the default ignores `p`.
    fn lse_sq_sum_scored(
        &self,
        score: crate::config::ScoreFn,
        n: usize,
        e: usize,
        z: &Self::Buf,
        p: &Self::Buf,
    ) -> Result<Self::Elem> {
        let _ = score;
        check_len("scores", n.saturating_mul(e), self.len(p))?;
        self.lse_sq_sum(n, e, z)
    }

    /// SimBal's element-wise pass on the `E x E` Gram matrix, in place (see
    /// [`ops::simbal::simbal_residual`]); returns the loss value.
    fn simbal_residual(
        &self,
        cfg: &SimBalConfig,
        e: usize,
        gram: &mut Self::Buf,
    ) -> Result<Self::Elem> {
        check_len("Gram matrix", e.saturating_mul(e), self.len(gram))?;
        let mut g = stage_out::<_, Elems>(self, gram, true)?;
        let loss = ops::simbal::simbal_residual(cfg, e, g.slice());
        g.finish(self)?;
        Ok(loss)
    }

    /// Column norms (`E`) and the column-normalised weight `rn` (ScaleFree SimBal).
    fn normalize_columns(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        r: &Self::Buf,
        norms: &mut Self::Buf,
        rn: &mut Self::Buf,
    ) -> Result<()> {
        check_len("router weight", d.saturating_mul(e), self.len(r))?;
        check_len("column norms", e, self.len(norms))?;
        check_len("normalised weight", d.saturating_mul(e), self.len(rn))?;
        let r = stage_in::<_, Elems>(self, r)?;
        let mut nm = stage_out::<_, Elems>(self, norms, false)?;
        let mut out = stage_out::<_, Elems>(self, rn, false)?;
        ops::simbal::column_norms(layout, d, e, &r, nm.slice());
        ops::simbal::normalize_columns(layout, d, e, &r, nm.slice(), out.slice());
        nm.finish(self)?;
        out.finish(self)
    }

    /// Adds the gradient through column normalisation to `grad` (see
    /// [`ops::simbal::scale_free_project`]).
    fn scale_free_project(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        rn: &Self::Buf,
        norms: &Self::Buf,
        g: &Self::Buf,
        grad: &mut Self::Buf,
    ) -> Result<()> {
        check_len("normalised weight", d.saturating_mul(e), self.len(rn))?;
        check_len("column norms", e, self.len(norms))?;
        check_len("normalised gradient", d.saturating_mul(e), self.len(g))?;
        check_len("router gradient", d.saturating_mul(e), self.len(grad))?;
        let rn = stage_in::<_, Elems>(self, rn)?;
        let norms = stage_in::<_, Elems>(self, norms)?;
        let g = stage_in::<_, Elems>(self, g)?;
        let mut out = stage_out::<_, Elems>(self, grad, true)?;
        ops::simbal::scale_free_project(layout, d, e, &rn, &norms, &g, out.slice(), true);
        out.finish(self)
    }

    /// Mean per-token routing entropy of the scores (nats).
    fn routing_entropy(&self, n: usize, e: usize, p: &Self::Buf) -> Result<Self::Elem> {
        check_len("scores", n.saturating_mul(e), self.len(p))?;
        let p = stage_in::<_, Elems>(self, p)?;
        crate::metrics::routing_entropy(n, e, &p)
    }

    /// Largest absolute value of the buffer; NaN when it holds a NaN (0 for an empty buffer).
    /// The validation fast path: one small reduction instead of a scan of every large buffer.
    fn max_abs(&self, buf: &Self::Buf) -> Result<Self::Elem> {
        let x = stage_in::<_, Elems>(self, buf)?;
        Ok(ops::reduce::max_abs(&x))
    }

    /// Reports the first non-finite value of a `? x cols` buffer with its position.
    fn check_finite(&self, what: &'static str, cols: usize, buf: &Self::Buf) -> Result<()> {
        let x = stage_in::<_, Elems>(self, buf)?;
        crate::shape::check_finite(what, cols, &x)
    }
}

/// Checks GEMM operand lengths; every [`Backend::gemm`] implementation calls it first.
pub fn check_gemm(g: &Gemm, a: usize, b: usize, c: usize) -> Result<()> {
    let (la, lb, lc) = g.lens();
    check_len("GEMM operand A", la, a)?;
    check_len("GEMM operand B", lb, b)?;
    check_len("GEMM operand C", lc, c)
}

/// Host-side LBL configuration check shared by the ops.
pub(crate) fn lbl_group_len(cfg: &LblConfig, n: usize) -> usize {
    match cfg.level {
        crate::config::LblLevel::Sequence { seq_len } => seq_len,
        _ => n,
    }
}
