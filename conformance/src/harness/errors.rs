//! Error checks: each [`SimbalError`] variant is produced by a real call on the backend and
//! matched field by field, its message is non-empty, and the router stays usable after it.
//! (`SimbalError` is `#[non_exhaustive]`, so a new variant cannot be caught at compile time: add
//! its check to its op's module with it.)

use crate::harness::util::*;
use simbal_core::memory::view;
use simbal_core::{Backend, LossConfig, Router, RouterConfig, RoutingStats, SimbalError};

/// Panics unless `got` is an error `want` accepts, with a non-empty message.
pub fn check(
    name: &str,
    what: &str,
    got: Result<(), SimbalError>,
    want: impl Fn(&SimbalError) -> bool,
) {
    match got {
        Err(e) if want(&e) => {
            assert!(!e.to_string().is_empty(), "{name}: {what}: empty message");
        }
        other => panic!("{name}: {what}: got {other:?}"),
    }
}

/// A forwarded router on `n x d` tokens with smooth tokens and weight; `io` is a
/// second instance of the backend for transfers.
pub struct Setup<B: Backend> {
    /// Transfers.
    pub io: B,
    /// The router, after one forward pass.
    pub router: Router<B>,
    /// Tokens.
    pub x: B::Buf,
    /// Router weight.
    pub r: B::Buf,
    /// Gate gradient.
    pub dw: B::Buf,
}

/// A router of `cfg` on `n x d` tokens, after one forward pass.
pub fn setup<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    cfg: RouterConfig,
    n: usize,
    d: usize,
) -> Setup<B> {
    let io = fresh(make);
    let e = cfg.experts;
    let x = up(
        &io,
        &(0..n * d)
            .map(|i| (i as f64 * 0.7).sin())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let r = up(
        &io,
        &(0..d * e)
            .map(|i| (i as f64 * 1.3).cos())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let dw = up(&io, &vec![1.0; n * cfg.k]).unwrap();
    let mut router = Router::new(fresh(make), cfg).expect("Router::new");
    router
        .forward(view::<B>(&x), view::<B>(&r), None)
        .expect("forward");
    Setup {
        io,
        router,
        x,
        r,
        dw,
    }
}

impl<B: Backend> Setup<B> {
    /// Uploads `v`.
    pub fn up(&self, v: &[f64]) -> B::Buf {
        up(&self.io, v).expect("upload")
    }
    /// Forward from `x` and `r` (the setup's when `None`) with `bias`.
    pub fn forward(
        &mut self,
        x: Option<&B::Buf>,
        r: Option<&B::Buf>,
        bias: Option<&B::Buf>,
    ) -> Result<(), SimbalError> {
        let x = view::<B>(x.unwrap_or(&self.x));
        let r = view::<B>(r.unwrap_or(&self.r));
        self.router.forward(x, r, bias.map(view::<B>)).map(|_| ())
    }
    /// Forward from the setup's tokens, then the backward of the pass with `dw` (the setup's
    /// when `None`).
    pub fn step(
        &mut self,
        dw: Option<&B::Buf>,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<(), SimbalError> {
        let dw = view::<B>(dw.unwrap_or(&self.dw));
        self.router
            .forward(view::<B>(&self.x), view::<B>(&self.r), None)?
            .backward(dw, losses, global)
            .map(|_| ())
    }
    /// Forward, then the backward with the setup's gate gradient.
    pub fn backward(
        &mut self,
        losses: &LossConfig,
        global: Option<&RoutingStats>,
    ) -> Result<(), SimbalError> {
        self.step(None, losses, global)
    }
    /// Panics unless a forward and a SimBal backward succeed.
    pub fn still_works(&mut self, name: &str) {
        self.backward(&LossConfig::simbal(), None)
            .unwrap_or_else(|e| panic!("{name}: the router is unusable after an error: {e:?}"));
    }
}

/// The `InvalidCoefficient` naming `what` with the bits of `value` a check expects.
pub fn invalid(what: &'static str, value: f64) -> impl Fn(&SimbalError) -> bool {
    move |e: &SimbalError| {
        matches!(e, SimbalError::InvalidCoefficient { what: w, value: v }
            if *w == what && v.to_bits() == value.to_bits())
    }
}

/// `Router::new` on a fresh backend, its result without the router.
pub fn new_router<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    cfg: RouterConfig,
) -> Result<(), SimbalError> {
    Router::new(fresh(make), cfg).map(|_| ())
}

/// `Err(LengthMismatch)` from a precondition function (`Args::check`), or a panic naming the
/// kernel.
pub fn refused<T>(name: &str, kernel: &str, got: simbal_core::Result<T>) {
    match got {
        Err(SimbalError::LengthMismatch { .. }) => {}
        Err(e) => panic!("{name}: {kernel} with a wrong length gave {e:?}"),
        Ok(_) => panic!("{name}: {kernel} with a wrong length passed its check"),
    }
}

/// Skips the check (returns) when the backend is unavailable.
macro_rules! start {
    ($name:expr, $make:ident) => {
        if $crate::harness::util::acquire($make, $name).is_none() {
            return;
        }
    };
}
pub(crate) use start;
