//! Error checks: each [`SimbalError`] variant is produced by a real call on the backend and
//! matched field by field, its message is non-empty, and the router stays usable after it.
//! (`SimbalError` is `#[non_exhaustive]`, so a new variant cannot be caught at compile time: add
//! its check to its op's module with it.)

use crate::harness::util::*;
use simbal_core::memory::view;
use simbal_core::{
    Backend, LblConfig, LblLevel, LossConfig, Router, RouterConfig, RoutingStats, SimbalError,
};

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
    /// Logits (zeros) for the logits path.
    pub z: B::Buf,
    /// Gate gradient.
    pub dw: B::Buf,
}

/// A router entry point given one input in place of the setup's: [`Setup::with`].
#[derive(Debug, Clone, Copy)]
pub enum Input {
    /// `forward` with these tokens.
    X,
    /// `forward` with this weight.
    R,
    /// `forward` with this selection bias.
    Bias,
    /// `forward_logits` from these logits.
    Logits,
    /// `forward_logits` from the setup's logits with this selection bias.
    LogitsBias,
    /// The backward (no losses) with this gate gradient, after a forward.
    Dw,
}

impl Input {
    /// What a check's message calls it.
    pub fn label(self) -> &'static str {
        match self {
            Input::X => "X",
            Input::R => "R",
            Input::Bias => "bias",
            Input::Logits => "logits",
            Input::LogitsBias => "logits bias",
            Input::Dw => "dW",
        }
    }
    /// What the router's errors call it (`SimbalError::LengthMismatch`, `NonFinite`).
    pub fn what(self) -> &'static str {
        match self {
            Input::X => "tokens X",
            Input::R => "router weight",
            Input::Bias | Input::LogitsBias => "selection bias",
            Input::Logits => "logits",
            Input::Dw => "gate gradient",
        }
    }
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
    let z = up(&io, &vec![0.0; n * e]).unwrap();
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
        z,
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
        // `check`: on a device the forward's checks wait for the pass's first read.
        self.router
            .forward(x, r, bias.map(view::<B>))
            .and_then(|mut p| p.check())
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
    /// The call of `input` with `buf` in its place (the setup's buffers elsewhere).
    pub fn with(&mut self, input: Input, buf: &B::Buf) -> Result<(), SimbalError> {
        let logits = |z: &B::Buf, bias: Option<&B::Buf>, router: &mut Router<B>| {
            router
                .forward_logits(view::<B>(z), bias.map(view::<B>))
                .and_then(|mut p| p.check())
        };
        match input {
            Input::X => self.forward(Some(buf), None, None),
            Input::R => self.forward(None, Some(buf), None),
            Input::Bias => self.forward(None, None, Some(buf)),
            Input::Logits => logits(buf, None, &mut self.router),
            Input::LogitsBias => logits(&self.z, Some(buf), &mut self.router),
            Input::Dw => self.step(Some(buf), &LossConfig::none(), None),
        }
    }
    /// [`check`] of each `(input, buf, at)`: the call of `input` with `buf` gives exactly the
    /// error `want(input.what(), at)`.
    pub fn refuses<'b, T>(
        &mut self,
        name: &str,
        want: impl Fn(&'static str, T) -> SimbalError,
        cases: impl IntoIterator<Item = (Input, &'b B::Buf, T)>,
    ) where
        B::Buf: 'b,
    {
        for (input, buf, at) in cases {
            let want = want(input.what(), at);
            check(name, input.label(), self.with(input, buf), |e| *e == want);
        }
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

/// Only the LBL, at `level` (default coefficient and normalisation).
pub fn lbl_at(level: LblLevel) -> LossConfig {
    LossConfig::none().with_lbl(LblConfig {
        level,
        ..LblConfig::default()
    })
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
