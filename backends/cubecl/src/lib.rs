//! GPU backend for simbal: cubecl 0.10 kernels (f32) on wgpu and CUDA.
//!
//! [`CubeclBackend`] implements [`simbal_core::Backend`] with device buffers ([`DevBuf`]) and
//! overrides every kernel the trait lets a backend override, so a router step keeps its buffers
//! on the device. The host is reached only where the trait's signature returns a host value (a
//! loss value, `max_abs`, a finiteness check: a few bytes each) and where the core's router
//! itself downloads (the score sums of a global-batch LBL, whose merged counts are on the host).
//!
//! The kernels themselves, usable without the trait, are in [`kernels`].
//!
//! ```no_run
//! # #[cfg(feature = "wgpu")] {
//! use simbal_core::{Backend, LossConfig, Router, RouterConfig};
//! use simbal_cubecl::CubeclBackend;
//! let be = CubeclBackend::<cubecl::wgpu::WgpuRuntime>::new(&Default::default());
//! let (n, d, e, k) = (64, 32, 8, 2);
//! let x = be.upload(&vec![0.1; n * d]).unwrap();
//! let r = be.upload(&vec![0.01; d * e]).unwrap();
//! let dw = be.upload(&vec![1.0; n * k]).unwrap();
//! let mut router = Router::new(be, RouterConfig::new(e, k)).unwrap();
//! router.forward(&x, &r, None, n, d).unwrap();
//! let losses = router.backward(&x, &r, &dw, &LossConfig::simbal(), None).unwrap();
//! # }
//! ```
#![warn(missing_docs)]

// `#[cube]` generates undocumented expansion items next to each (documented) kernel function.
#[allow(missing_docs)]
pub mod kernels;

use cubecl::prelude::*;
use simbal_core::config::{DropPolicy, LblNormalization, ScoreFn, SimBalNorm, WeightLayout};
use simbal_core::ops::gemm::Gemm;
use simbal_core::ops::lbl::LblScales;
use simbal_core::shape::check_len;
use simbal_core::{
    check_gemm, checks, Backend, LblCoef, LblConfig, Result, RouterConfig, SimBalConfig,
    SimbalError,
};

pub use kernels::{DevBuf, KernelError};

use kernels::{dispatch, gemm, lbl, reduce, router_backward, router_forward, simbal, util};

/// The cubecl backend on runtime `R` (f32).
pub struct CubeclBackend<R: Runtime> {
    client: ComputeClient<R>,
}

impl<R: Runtime> Clone for CubeclBackend<R> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
        }
    }
}

impl<R: Runtime> core::fmt::Debug for CubeclBackend<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CubeclBackend({})", R::name(&self.client))
    }
}

impl<R: Runtime> CubeclBackend<R> {
    /// A backend on `device` (panics inside cubecl when the device cannot be opened: use
    /// [`CubeclBackend::try_new`] to get `None` instead).
    pub fn new(device: &R::Device) -> Self {
        Self {
            client: R::client(device),
        }
    }

    /// A backend on `device`, or `None` when the runtime finds no such device (no adapter, no
    /// driver).
    pub fn try_new(device: &R::Device) -> Option<Self> {
        let device = device.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || R::client(&device)))
            .ok()
            .map(|client| Self { client })
    }

    /// A backend on an existing client.
    pub fn from_client(client: ComputeClient<R>) -> Self {
        Self { client }
    }

    /// The cubecl client.
    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Waits for every queued kernel; reports a device error raised since the last sync.
    pub fn sync(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync()).map_err(|e| backend_err(format!("{e:?}")))
    }

    /// Refuses an allocation of `len` 4-byte elements larger than one device allocation may be
    /// (or than the kernels' `u32` indexing reaches).
    fn check_alloc(&self, len: usize) -> Result<()> {
        let max = self.client.properties().memory.max_page_size;
        let ok = len <= u32::MAX as usize && (len as u64).checked_mul(4).is_some_and(|b| b <= max);
        if ok {
            Ok(())
        } else {
            Err(backend_err(format!(
                "a buffer of {len} elements exceeds the device's largest allocation ({max} bytes)"
            )))
        }
    }

    /// Fails with [`SimbalError::Backend`] when an index of `idx` is `>= e` (a device reduction
    /// and a 4-byte read, skipped for indices written by [`Backend::route_rows`]).
    fn check_indices(&self, idx: &DevBuf<u32>, e: usize) -> Result<()> {
        if idx.bound.is_some_and(|b| (b as usize) <= e) {
            return Ok(());
        }
        let max = reduce::max_u32(&self.client, idx).map_err(map_err)?;
        if idx.len > 0 && max as usize >= e {
            return Err(backend_err("an expert index is out of range".into()));
        }
        Ok(())
    }
}

/// `check_len` against `a * b`; an overflowing product is a mismatch with expected `usize::MAX`
/// (as `simbal_core::shape::product` reports it).
fn check_len2(what: &'static str, a: usize, b: usize, got: usize) -> Result<()> {
    check_len(what, a.saturating_mul(b), got)
}

fn backend_err(message: String) -> SimbalError {
    SimbalError::Backend { message }
}

/// Kernel errors as core errors: length errors keep their shape, the rest are backend errors.
fn map_err(e: KernelError) -> SimbalError {
    match e {
        KernelError::Length {
            what,
            expected,
            actual,
        } => SimbalError::LengthMismatch {
            what,
            expected,
            got: actual,
        },
        other => backend_err(other.to_string()),
    }
}

impl<R: Runtime> Backend for CubeclBackend<R> {
    type Elem = f32;
    type Buf = DevBuf<f32>;
    type IdxBuf = DevBuf<u32>;

    fn name(&self) -> String {
        format!("cubecl-{}-f32", R::name(&self.client))
    }

    fn zeros(&self, len: usize) -> Result<DevBuf<f32>> {
        self.check_alloc(len)?;
        let b = DevBuf::empty(&self.client, len);
        util::fill_f32(&self.client, &b, 0.0).map_err(map_err)?;
        Ok(b)
    }
    fn upload(&self, host: &[f32]) -> Result<DevBuf<f32>> {
        self.check_alloc(host.len())?;
        Ok(DevBuf::upload(&self.client, host))
    }
    fn download(&self, buf: &DevBuf<f32>, host: &mut [f32]) -> Result<()> {
        check_len("download target", buf.len, host.len())?;
        host.copy_from_slice(&buf.read(&self.client).map_err(map_err)?);
        Ok(())
    }
    fn write(&self, buf: &mut DevBuf<f32>, host: &[f32]) -> Result<()> {
        check_len("write source", buf.len, host.len())?;
        *buf = DevBuf::upload(&self.client, host);
        Ok(())
    }
    fn len(&self, buf: &DevBuf<f32>) -> usize {
        buf.len
    }
    fn idx_zeros(&self, len: usize) -> Result<DevBuf<u32>> {
        self.check_alloc(len)?;
        let b = DevBuf::empty(&self.client, len);
        util::fill_u32(&self.client, &b, 0).map_err(map_err)?;
        Ok(b)
    }
    fn idx_upload(&self, host: &[u32]) -> Result<DevBuf<u32>> {
        self.check_alloc(host.len())?;
        Ok(DevBuf::upload(&self.client, host))
    }
    fn idx_download(&self, buf: &DevBuf<u32>, host: &mut [u32]) -> Result<()> {
        check_len("download target", buf.len, host.len())?;
        host.copy_from_slice(&buf.read(&self.client).map_err(map_err)?);
        Ok(())
    }
    fn idx_write(&self, buf: &mut DevBuf<u32>, host: &[u32]) -> Result<()> {
        check_len("write source", buf.len, host.len())?;
        *buf = DevBuf::upload(&self.client, host);
        Ok(())
    }
    fn idx_len(&self, buf: &DevBuf<u32>) -> usize {
        buf.len
    }

    fn gemm(&self, g: &Gemm, a: &DevBuf<f32>, b: &DevBuf<f32>, c: &mut DevBuf<f32>) -> Result<()> {
        check_gemm(g, a.len, b.len, c.len)?;
        let dims = gemm::GemmDims {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            alpha: g.alpha as f32,
            beta: g.beta as f32,
        };
        gemm::gemm(&self.client, &dims, a, b, c).map_err(map_err)
    }

    fn route_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &DevBuf<f32>,
        bias: Option<&DevBuf<f32>>,
        p: &mut DevBuf<f32>,
        idx: &mut DevBuf<u32>,
        gates: &mut DevBuf<f32>,
    ) -> Result<()> {
        checks::route_rows(
            cfg,
            n,
            z.len,
            bias.map(|b| b.len),
            p.len,
            idx.len,
            gates.len,
        )?;
        let (e, k) = (cfg.experts, cfg.k);
        let o = router_forward::RouteOptions {
            e,
            k,
            softmax: cfg.score == ScoreFn::Softmax,
            renorm: cfg.renormalize,
            scale: cfg.scale as f32,
            groups: cfg.groups.map(|g| (g.groups, g.top_groups)),
        };
        router_forward::route_rows(&self.client, &o, n, z, bias, p, idx, gates).map_err(map_err)?;
        idx.bound = u32::try_from(e).ok();
        Ok(())
    }

    fn dispatch(
        &self,
        cfg: &RouterConfig,
        n: usize,
        idx: &DevBuf<u32>,
        gates: &mut DevBuf<f32>,
        dropped: &mut DevBuf<u32>,
        counts: &mut DevBuf<u32>,
        order: &mut DevBuf<u32>,
        offsets: &mut DevBuf<u32>,
    ) -> Result<()> {
        checks::dispatch(
            cfg,
            n,
            idx.len,
            gates.len,
            dropped.len,
            counts.len,
            order.len,
            offsets.len,
        )?;
        let (e, k) = (cfg.experts, cfg.k);
        self.check_indices(idx, e)?;
        let capacity = cfg.capacity.map(|c| dispatch::CapacityLimit {
            per_expert: c.per_expert(n, e, k),
            by_probs: c.policy == DropPolicy::Probs,
        });
        dispatch::dispatch(
            &self.client,
            e,
            k,
            n,
            capacity,
            idx,
            gates,
            dropped,
            counts,
            order,
            offsets,
        )
        .map_err(map_err)?;
        order.bound = u32::try_from(n * k).ok();
        Ok(())
    }

    fn router_backward_rows(
        &self,
        cfg: &RouterConfig,
        n: usize,
        z: &DevBuf<f32>,
        p: &DevBuf<f32>,
        idx: &DevBuf<u32>,
        gates: &DevBuf<f32>,
        dropped: &DevBuf<u32>,
        dw: &DevBuf<f32>,
        lbl: Option<LblCoef<'_, DevBuf<f32>>>,
        z_coef: f32,
        dz: &mut DevBuf<f32>,
    ) -> Result<()> {
        checks::router_backward_rows(
            cfg,
            n,
            z.len,
            p.len,
            idx.len,
            gates.len,
            dropped.len,
            dw.len,
            lbl.as_ref().map(|l| (l.group_len, l.coef.len)),
            dz.len,
        )?;
        let (e, k) = (cfg.experts, cfg.k);
        self.check_indices(idx, e)?;
        let o = router_backward::BackOptions {
            e,
            k,
            softmax: cfg.score == ScoreFn::Softmax,
            renorm: cfg.renormalize,
            scale: cfg.scale as f32,
            z_coef,
        };
        let lbl = lbl.map(|l| (l.coef, l.group_len));
        router_backward::router_backward_rows(
            &self.client,
            &o,
            n,
            z,
            p,
            idx,
            gates,
            dropped,
            dw,
            lbl,
            dz,
        )
        .map_err(map_err)
    }

    fn group_column_sums(
        &self,
        n: usize,
        cols: usize,
        group_len: usize,
        a: &DevBuf<f32>,
        out: &mut DevBuf<f32>,
    ) -> Result<()> {
        checks::group(group_len, n)?;
        check_len2("matrix", n, cols, a.len)?;
        check_len2("group sums", n / group_len, cols, out.len)?;
        reduce::group_column_sums(&self.client, n, cols, group_len, a, out).map_err(map_err)
    }

    fn group_counts(
        &self,
        n: usize,
        k: usize,
        e: usize,
        group_len: usize,
        idx: &DevBuf<u32>,
        dropped: &DevBuf<u32>,
        out: &mut DevBuf<u32>,
    ) -> Result<()> {
        checks::group(group_len, n)?;
        check_len2("indices", n, k, idx.len)?;
        check_len2("dropped flags", n, k, dropped.len)?;
        check_len2("group counts", n / group_len, e, out.len)?;
        if k == 0 || n == 0 {
            return util::fill_u32(&self.client, out, 0).map_err(map_err);
        }
        dispatch::histogram(&self.client, e, group_len * k, idx, Some(dropped), out)
            .map_err(map_err)
    }

    fn lbl_coefficients(
        &self,
        cfg: &LblConfig,
        e: usize,
        scales: &LblScales,
        counts: &DevBuf<u32>,
        sums: &DevBuf<f32>,
        coef: &mut DevBuf<f32>,
    ) -> Result<f32> {
        let len = scales.groups.saturating_mul(e);
        check_len("LBL group counts", len, counts.len)?;
        check_len("LBL group sums", len, sums.len)?;
        check_len("LBL coefficients", len, coef.len)?;
        // As `ops::lbl::lbl_value_and_coef`: the scale in f64, rounded once to f32.
        let mut ae = cfg.alpha * e as f64;
        if cfg.normalization == LblNormalization::HuggingFace {
            ae *= scales.k as f64;
        }
        let c_scale = ae
            / (scales.k as f64 * scales.count_tokens * scales.score_tokens * scales.groups as f64);
        let out = DevBuf::<f32>::empty(&self.client, 1);
        lbl::lbl_coefficients(&self.client, c_scale as f32, counts, sums, coef, &out, 0)
            .map_err(map_err)?;
        Ok(out.read(&self.client).map_err(map_err)?[0])
    }

    fn lse_sq_sum(&self, n: usize, e: usize, z: &DevBuf<f32>) -> Result<f32> {
        check_len2("logits", n, e, z.len)?;
        let out = DevBuf::<f32>::empty(&self.client, 1);
        reduce::lse_sq_sum(&self.client, n, e, z, &out, 0).map_err(map_err)?;
        Ok(out.read(&self.client).map_err(map_err)?[0])
    }

    fn simbal_residual(&self, cfg: &SimBalConfig, e: usize, gram: &mut DevBuf<f32>) -> Result<f32> {
        check_len2("Gram matrix", e, e, gram.len)?;
        let norm = match cfg.norm {
            SimBalNorm::L1 => simbal::Norm::L1,
            SimBalNorm::FrobeniusSq => simbal::Norm::FrobeniusSq,
            SimBalNorm::ScaleFree => simbal::Norm::ScaleFree,
        };
        let out = DevBuf::<f32>::empty(&self.client, 1);
        simbal::simbal_residual(&self.client, norm, cfg.lambda as f32, e, gram, &out, 0)
            .map_err(map_err)?;
        Ok(out.read(&self.client).map_err(map_err)?[0])
    }

    fn normalize_columns(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        r: &DevBuf<f32>,
        norms: &mut DevBuf<f32>,
        rn: &mut DevBuf<f32>,
    ) -> Result<()> {
        simbal::normalize_columns(
            &self.client,
            layout == WeightLayout::DxE,
            d,
            e,
            r,
            norms,
            rn,
        )
        .map_err(map_err)
    }

    fn scale_free_project(
        &self,
        layout: WeightLayout,
        d: usize,
        e: usize,
        rn: &DevBuf<f32>,
        norms: &DevBuf<f32>,
        g: &DevBuf<f32>,
        grad: &mut DevBuf<f32>,
    ) -> Result<()> {
        simbal::scale_free_project(
            &self.client,
            layout == WeightLayout::DxE,
            d,
            e,
            rn,
            norms,
            g,
            grad,
        )
        .map_err(map_err)
    }

    fn routing_entropy(&self, n: usize, e: usize, p: &DevBuf<f32>) -> Result<f32> {
        simbal_core::shape::check_dims(n, 1, e)?;
        check_len2("scores", n, e, p.len)?;
        let out = DevBuf::<f32>::empty(&self.client, 1);
        reduce::routing_entropy(&self.client, n, e, p, &out, 0).map_err(map_err)?;
        Ok(out.read(&self.client).map_err(map_err)?[0])
    }

    fn max_abs(&self, buf: &DevBuf<f32>) -> Result<f32> {
        reduce::max_abs(&self.client, buf).map_err(map_err)
    }

    fn check_finite(&self, what: &'static str, cols: usize, buf: &DevBuf<f32>) -> Result<()> {
        let first = DevBuf::<u32>::empty(&self.client, 1);
        reduce::first_non_finite(&self.client, buf, &first).map_err(map_err)?;
        let at = first.read(&self.client).map_err(map_err)?[0];
        if at == u32::MAX {
            return Ok(());
        }
        let (at, cols) = (at as usize, cols.max(1));
        Err(SimbalError::NonFinite {
            what,
            row: at / cols,
            col: at % cols,
        })
    }
}
