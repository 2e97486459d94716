//! [`SimbalBackend`]: how a burn backend's tensors reach a simbal engine (a
//! [`simbal_core::Backend`]) and come back, and the router forward on them.
//!
//! The trait is burn's own pattern for custom operations (a backend trait extending
//! [`burn::tensor::backend::Backend`], implemented per backend and once for
//! [`burn::backend::Autodiff`]): each implementation names the engine its tensors run on and
//! lends a tensor's memory to it, zero-copy where the layout allows. Implemented here for
//!
//! | burn backend | engine | what crosses |
//! |---|---|---|
//! | `NdArray<f32>`, `NdArray<f64>`, `Flex` | [`simbal_faer::Faer`] | inputs lent as slices (contiguous ones without a copy); the routing copied once into new tensors; on `NdArray` the gradients move into theirs (no copy, memory reused once dropped) |
//! | `CubeBackend<R, f32, ..>` (burn's `Wgpu`, `Cuda` without fusion) | `simbal_cubecl::CubeclBackend` on burn's own client | handles, no copy of an input; the routing copied on the device; gradients adopted (no copy) |
//! | `Autodiff<B, C>` for any of these | `B`'s engine | the router forward becomes one node of burn's graph whose backward is simbal's analytic gradient |
//! | any other burn backend | [`crate::BurnTensors`] | implement the trait with [`crate::generic_simbal_backend!`]: GEMMs on the backend, the rest staged through host memory |

use std::borrow::Borrow;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{Element, TensorData};
use simbal_core::{LossConfig, Memory, Result, RoutingStats, SimbalError};

use crate::route::{route_with_engine, RouteInputs, RouteOutputs, SharedRouter};

/// The simbal engine of a burn backend's tensors.
pub type EngineOf<B> = <B as SimbalBackend>::Engine;
/// An element view of a backend's engine.
pub type ViewOf<B> = <EngineOf<B> as Memory>::View;
/// The element type of a backend's engine.
pub type ElemOf<B> = <EngineOf<B> as Memory>::Elem;
/// An owned element buffer of a backend's engine.
pub type BufOf<B> = <EngineOf<B> as Memory>::Buf;
/// An owned index buffer of a backend's engine.
pub type IdxBufOf<B> = <EngineOf<B> as Memory>::IdxBuf;

/// A burn backend simbal runs on: its engine, how its tensors are lent to the engine and how
/// the engine's buffers become its tensors. The router forward ([`SimbalBackend::simbal_route`])
/// has a default built from these; [`burn::backend::Autodiff`] overrides it to add simbal's
/// analytic backward to burn's graph.
///
/// Every method that can fail returns simbal's typed error; none panics.
pub trait SimbalBackend: Backend {
    /// The simbal backend the kernels run on (cheap to clone: a handle to shared state).
    type Engine: simbal_core::Backend<Elem: Element, Buf: Send + Sync, IdxBuf: Send + Sync>
        + Clone
        + Send
        + Sync
        + 'static;
    /// A float tensor lent to the engine: a borrowed slice, a handle, or a staged copy.
    type Lent<'a>: Borrow<ViewOf<Self>>;

    /// The engine for tensors on `device`.
    ///
    /// # Errors
    /// [`simbal_core::SimbalError::Backend`] when the device cannot be had.
    fn engine(device: &Self::Device) -> Result<Self::Engine>;

    /// `t`'s elements in row-major order as an engine view: without a copy when `t` is
    /// contiguous in the engine's element type, through a copy otherwise.
    ///
    /// # Errors
    /// A transfer failure.
    fn lend<'a>(engine: &Self::Engine, t: &'a FloatTensor<Self>) -> Result<Self::Lent<'a>>;

    /// A new float tensor of `shape` on `device` holding `v` (the engine may reuse `v` at its
    /// next call, so this is a copy or a move of fresh memory, never an alias).
    ///
    /// # Errors
    /// [`simbal_core::SimbalError::LengthMismatch`] when `v` does not hold `shape`'s elements;
    /// a transfer failure.
    fn float_out(
        engine: &Self::Engine,
        v: &ViewOf<Self>,
        shape: &[usize],
        device: &Self::Device,
    ) -> Result<FloatTensor<Self>> {
        let len = checked_len(engine.len(v), shape)?;
        let mut host = vec![<ElemOf<Self> as num_traits::Zero>::zero(); len];
        engine.download(v, &mut host)?;
        let data = TensorData::new(host, shape.to_vec()).convert::<Self::FloatElem>();
        Ok(Self::float_from_data(data, device))
    }

    /// A new int tensor of `shape` holding the indices `v` (all below `2^31`, or
    /// `u32::MAX` where an index buffer marks "none").
    ///
    /// # Errors
    /// As [`SimbalBackend::float_out`].
    fn int_out(
        engine: &Self::Engine,
        v: &<Self::Engine as Memory>::IdxView,
        shape: &[usize],
        device: &Self::Device,
    ) -> Result<IntTensor<Self>> {
        let len = checked_len(engine.idx_len(v), shape)?;
        let mut host = vec![0u32; len];
        engine.idx_download(v, &mut host)?;
        let data = TensorData::new(host, shape.to_vec()).convert::<Self::IntElem>();
        Ok(Self::int_from_data(data, device))
    }

    /// A buffer of `len` elements for the backward to write a gradient (`dX`, `dR`) into, to
    /// become a tensor through [`SimbalBackend::grad_out`]. The default is fresh zeros; a
    /// backend may reuse the memory of a gradient it handed out before (`spare`) once nothing
    /// else holds it.
    ///
    /// # Errors
    /// [`simbal_core::SimbalError::Backend`] when the memory cannot be had.
    fn grad_buf(engine: &Self::Engine, len: usize, spare: &mut Spare) -> Result<BufOf<Self>> {
        let _ = spare;
        engine.zeros(len)
    }

    /// The gradient in `buf` as a tensor of `shape`. The default copies it
    /// ([`SimbalBackend::float_out`]); a backend whose tensors can adopt the buffer takes it
    /// without a copy (and may keep a handle in `spare` to reuse the memory later).
    ///
    /// # Errors
    /// As [`SimbalBackend::float_out`].
    fn grad_out(
        engine: &Self::Engine,
        buf: BufOf<Self>,
        shape: &[usize],
        device: &Self::Device,
        spare: &mut Spare,
    ) -> Result<FloatTensor<Self>> {
        let _ = spare;
        Self::float_out(engine, buf.borrow(), shape, device)
    }

    /// A token mask (`true` = valid) as the engine's 0/1 index buffer.
    ///
    /// # Errors
    /// A transfer failure.
    fn mask_in(engine: &Self::Engine, mask: BoolTensor<Self>) -> Result<IdxBufOf<Self>> {
        let data = crate::convert::bool_data::<Self>(mask)?;
        let host: Vec<u32> = data.iter().map(|&v| u32::from(v)).collect();
        engine.idx_upload(&host)
    }

    /// Non-negative integers (sequence offsets) as an engine index buffer.
    ///
    /// # Errors
    /// [`simbal_core::SimbalError::InvalidOffsets`] for a negative entry or one beyond `u32`; a
    /// transfer failure.
    fn idx_in(engine: &Self::Engine, t: IntTensor<Self>) -> Result<IdxBufOf<Self>> {
        let host = crate::convert::offsets_data::<Self>(t)?;
        engine.idx_upload(&host)
    }

    /// The router forward on this backend's tensors: routing, the configured losses' values and
    /// the dispatch plan; with `backward` (a backward will follow), SimBal's gradient too. The
    /// default runs the engine's router; [`burn::backend::Autodiff`] wraps it in a graph node
    /// (and asks for the gradient when `X` or `R` is tracked, whatever `backward` says).
    ///
    /// # Errors
    /// The router's and the losses' errors ([`simbal_core::Router::forward_batch`],
    /// [`simbal_core::Pass::loss_values`]); conversion failures.
    fn simbal_route(
        router: &SharedRouter<Self::Engine>,
        inputs: RouteInputs<Self>,
        losses: &LossConfig,
        global: Option<Arc<RoutingStats>>,
        backward: bool,
    ) -> Result<RouteOutputs<Self>> {
        route_with_engine::<Self>(router, &inputs, losses, global.as_deref(), backward)
    }
}

/// The element count of `shape`, which a buffer of `len` elements must hold.
pub(crate) fn checked_len(len: usize, shape: &[usize]) -> Result<usize> {
    let want = shape.iter().product::<usize>();
    if want == len {
        Ok(len)
    } else {
        Err(SimbalError::LengthMismatch {
            what: "tensor from a simbal buffer",
            expected: want,
            got: len,
        })
    }
}

/// Memory a router's backends may reuse across steps (gradients handed out before), kept by the
/// router: at most [`Spare::CAP`] entries of any type, the oldest dropped first.
#[derive(Default)]
pub struct Spare(Vec<Box<dyn core::any::Any + Send + Sync>>);

impl Spare {
    /// Entries kept at most (a step hands out two gradients).
    pub const CAP: usize = 4;

    /// Keeps `t` for a later [`Spare::take`].
    pub fn put<T: core::any::Any + Send + Sync>(&mut self, t: T) {
        if self.0.len() == Self::CAP {
            self.0.remove(0);
        }
        self.0.push(Box::new(t));
    }

    /// Takes the first kept `T` for which `fits` holds.
    pub fn take<T: core::any::Any>(&mut self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let at = self
            .0
            .iter()
            .position(|b| b.downcast_ref::<T>().is_some_and(&fits))?;
        self.0.remove(at).downcast::<T>().ok().map(|b| *b)
    }
}
