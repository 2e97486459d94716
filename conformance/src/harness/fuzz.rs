//! Arbitrary input to every public entry point: shapes (0, small, and sizes whose products
//! overflow), buffer lengths (right or wrong), values (NaN, ±inf, ±1e30, f64::MAX, subnormals,
//! zeros), configurations (valid or not) and statistics. Each call runs under
//! `std::panic::catch_unwind`: a panic fails the case with the input printed.
//!
//! What a result must satisfy besides not panicking:
//! - `Router` ops with the non-finite check on (`check_finite`): `Err`, or every output finite
//!   (logits, scores, gates, `dZ`, `dX`, `dR`, loss values, statistics, entropy). With the check
//!   off the caller promised clean data, so only "no panic" is required.
//! - `simbal_loss`, `update_bias`, metrics, `orthogonal_init`: `Err`, or a finite result whenever
//!   every input value is finite.
//! - `route` (the forward kernel, from given logits): finite scores and gates from finite logits and bias with
//!   a valid configuration and a scale representable in the element type.
//! - Every other kernel and memory primitive: no panic (their outputs may legitimately overflow,
//!   e.g. a GEMM of 1e30s in `f32`; the ops above turn that into `Err`).
//!
//! Sizes are chosen so that nothing asks for an impossible allocation: a shape whose product does
//! not overflow but is huge is only used against buffers of the wrong length, which every entry
//! point checks before allocating.
//!
//! A check with buffers runs through [`fuzz_check`]: its strategy draws a value and a [`Pool`],
//! and its body gets the value and a [`Fuzz`] case (the backend, the input a panic prints,
//! buffers from the pool, the guard).

use crate::harness::kernel::{Fill, R};
use crate::harness::util::*;
use proptest::prelude::*;
use simbal_core::{
    Backend, Capacity, DropPolicy, GroupLimit, LblConfig, LblLevel, LblNormalization, LossConfig,
    RouterConfig, RoutingStats, Scalar, ScoreFn, SeqLayout, SimBalConfig, SimBalNorm, WeightLayout,
    ZLossConfig,
};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Number of cases of each fuzz property.
pub const CASES: u32 = 64;

/// Largest buffer the fuzz allocates.
pub const MAX_LEN: usize = 4096;

/// Any value, finite or not.
pub fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -4.0..4.0f64,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(1e30),
        1 => Just(-1e30),
        1 => Just(f64::MAX),
        1 => Just(1e-40),  // subnormal in f32
        1 => Just(1e-310), // subnormal in f64
    ]
}

/// A finite value, possibly extreme (±1e30, subnormals, zeros): finite in `f32` too.
pub fn finite_extreme() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -4.0..4.0f64,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(1e30),
        1 => Just(-1e30),
        1 => Just(1e-40),
        1 => Just(1e-310),
    ]
}

/// A coefficient (scale, lambda, capacity factor, rate): usually sane, sometimes not.
pub fn coef() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.0..3.0f64,
        1 => Just(0.0),
        1 => Just(-1.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(1e30),
        1 => Just(1e300),
        1 => Just(1e-300),
    ]
}

/// A dimension: usually small (0 included), sometimes huge.
pub fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 0..=5usize,
        1 => Just(usize::MAX),
        1 => Just(1usize << 40),
        1 => Just(usize::MAX / 2 + 1),
        1 => Just(512usize),
    ]
}

/// `(N, D, E)`: usually plausible (1 to 6), sometimes arbitrary.
pub fn dims() -> impl Strategy<Value = (usize, usize, usize)> {
    prop_oneof![
        3 => (1..=6usize, 1..=6usize, 1..=6usize),
        1 => (dim(), dim(), dim()),
    ]
}

/// Arbitrary routing statistics (wrong lengths, saturating counts, non-finite sums).
pub fn stats() -> impl Strategy<Value = RoutingStats> {
    (
        prop::collection::vec(prop_oneof![4 => 0..20u64, 1 => Just(u64::MAX)], 0..=6),
        prop::collection::vec(wild(), 0..=6),
        prop_oneof![Just(0u64), 1..50u64, Just(u64::MAX)],
        prop_oneof![Just(0u64), 1..50u64, Just(u64::MAX)],
    )
        .prop_map(|(counts, score_sums, tokens, dropped)| RoutingStats {
            routed_counts: counts.iter().rev().copied().collect(),
            counts,
            score_sums,
            tokens,
            dropped,
        })
}

/// An arbitrary (often invalid) router configuration for `e` experts.
pub fn router_config(e: usize) -> impl Strategy<Value = RouterConfig> {
    (
        (
            prop_oneof![3 => 1..=e.clamp(1, 64), 1 => dim()],
            prop_oneof![
                Just(ScoreFn::Softmax),
                Just(ScoreFn::Sigmoid),
                Just(ScoreFn::SqrtSoftplus)
            ],
            any::<bool>(),
            coef(),
        ),
        prop::option::weighted(
            0.25,
            (
                prop_oneof![4 => 0..=6usize, 1 => Just(512usize)],
                0..=6usize,
            ),
        ),
        prop::option::weighted(
            0.4,
            (
                coef(),
                prop_oneof![Just(DropPolicy::Probs), Just(DropPolicy::Position)],
            ),
        ),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        prop::bool::weighted(0.75),
    )
        .prop_map(
            move |((k, score, renormalize, scale), groups, capacity, layout, check_finite)| {
                RouterConfig {
                    experts: e,
                    k,
                    score,
                    renormalize,
                    scale,
                    groups: groups.map(|(groups, top_groups)| GroupLimit { groups, top_groups }),
                    capacity: capacity.map(|(factor, policy)| Capacity {
                        factor,
                        policy,
                        min: 3,
                    }),
                    layout,
                    selection: simbal_core::Selection::TopK,
                    check_finite,
                }
            },
        )
}

/// Arbitrary loss configuration.
pub fn losses() -> impl Strategy<Value = LossConfig> {
    let norm = prop_oneof![
        Just(SimBalNorm::L1),
        Just(SimBalNorm::FrobeniusSq),
        Just(SimBalNorm::ScaleFree)
    ];
    let level = prop_oneof![
        3 => Just(LblLevel::MicroBatch),
        1 => dim().prop_map(LblLevel::sequences),
        1 => dim().prop_map(|batch| LblLevel::Sequence(SeqLayout::SequenceMajor { batch })),
        1 => Just(LblLevel::Sequence(SeqLayout::Packed)),
        2 => Just(LblLevel::GlobalBatch),
    ]
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    .boxed();
    let normalization = prop_oneof![
        Just(LblNormalization::Switch),
        Just(LblNormalization::HuggingFace)
    ];
    (
        prop::option::of((coef(), norm).prop_map(|(lambda, norm)| SimBalConfig { lambda, norm })),
        prop::option::of((coef(), level, normalization).prop_map(
            |(alpha, level, normalization)| LblConfig {
                alpha,
                level,
                normalization,
                shard_factor: 1.0,
                ..LblConfig::default()
            },
        )),
        prop::option::of(coef().prop_map(|beta| ZLossConfig { beta })),
    )
        .prop_map(|(simbal, lbl, z_loss)| LossConfig {
            simbal,
            lbl,
            z_loss,
        })
}

/// Values and buffer lengths of one fuzz case.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Values, cycled through to fill buffers.
    pub values: Vec<f64>,
    /// Per buffer: `None` for the length its shape implies, `Some(l)` for length `l`.
    pub lens: Vec<Option<usize>>,
}

/// A pool of values and lengths.
pub fn pool() -> impl Strategy<Value = Pool> {
    (
        prop_oneof![
            prop::collection::vec(-4.0..4.0f64, 1..=24),
            prop::collection::vec(finite_extreme(), 1..=24),
            prop::collection::vec(wild(), 1..=24),
        ],
        prop::collection::vec(prop::option::weighted(0.08, 0..=12usize), 24),
    )
        .prop_map(|(values, lens)| Pool { values, lens })
}

/// Hands out buffers from a [`Pool`].
pub struct Filler<'a> {
    pool: &'a Pool,
    next: std::cell::Cell<usize>,
}

impl<'a> Filler<'a> {
    /// Buffers from `pool`.
    pub fn new(pool: &'a Pool) -> Self {
        Self {
            pool,
            next: std::cell::Cell::new(0),
        }
    }
    /// The length of the next buffer: the shape's (if computable and small) unless overridden.
    pub fn len(&self, shape: Option<usize>) -> usize {
        let i = self.next.get();
        self.next.set(i + 1);
        match (self.pool.lens[i % self.pool.lens.len()], shape) {
            (Some(l), _) => l,
            (None, Some(l)) if l <= MAX_LEN => l,
            (None, _) => 3,
        }
    }
    /// The values of the next buffer.
    pub fn vals(&self, shape: Option<usize>) -> Vec<f64> {
        let l = self.len(shape);
        let v = &self.pool.values;
        let off = self.next.get() * 7;
        (0..l).map(|i| v[(off + i) % v.len()]).collect()
    }
    /// The next index buffer: entries below `e + 2` (so some are out of range), `u32::MAX` for
    /// a non-finite value.
    pub fn idx(&self, shape: Option<usize>, e: usize) -> Vec<u32> {
        self.vals(shape)
            .into_iter()
            .map(|v| {
                if v.is_finite() {
                    ((v.abs() * 3.0) as u64 % (e as u64).saturating_add(2)) as u32
                } else {
                    u32::MAX
                }
            })
            .collect()
    }
}

/// `a b`, `None` when it overflows.
pub fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

/// Runs `f`, turning a panic into a case failure that prints `input`.
/// With `SIMBAL_FUZZ_TRACE` set, each call is printed before it runs (to find a hang).
pub fn guard<R>(what: &str, input: &dyn Debug, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    if std::env::var_os("SIMBAL_FUZZ_TRACE").is_some() {
        eprintln!("fuzz: {what} on {input:?}");
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string payload".into());
            Err(fail(format!("{what} panicked: {msg}\n  input: {input:#?}")))
        }
    }
}

/// Whether every value is finite.
pub fn all_finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// A finite-result requirement: `what` returned `Ok` with non-finite values.
pub fn must_be_finite(what: &str, input: &dyn Debug, v: &[f64]) -> CaseResult {
    ensure(all_finite(v), || {
        format!("{what} returned Ok with non-finite values {v:?}\n  input: {input:#?}")
    })
}

/// Whether a coefficient is representable in `T` (the element type the backend computes in).
pub fn fits<T: Scalar>(x: f64) -> bool {
    T::of(x).is_finite()
}

/// One fuzz case on a backend: the input (printed when a call panics or a result is not
/// finite) and the buffers its pool hands out. As a [`Fill`], it uploads the pool's values.
pub struct Fuzz<'a, B, I> {
    /// The backend.
    pub b: &'a B,
    /// The whole input.
    pub input: &'a I,
    /// The input's pool.
    pub f: Filler<'a>,
}

impl<B: Backend, I: Debug> Fuzz<'_, B, I> {
    /// [`guard`] on this input.
    pub fn guard<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
        guard(what, self.input, f)
    }
    /// [`must_be_finite`] on this input.
    pub fn finite(&self, what: &str, v: &[f64]) -> CaseResult {
        must_be_finite(what, self.input, v)
    }
    /// The next buffer of the pool, of the length `shape` implies unless the pool overrides it.
    pub fn up(&self, shape: Option<usize>) -> Result<B::Buf, TestCaseError> {
        self.vals(shape).ctx("upload")
    }
    /// Downloads `buf`.
    pub fn down(&self, buf: &B::Buf) -> Result<Vec<f64>, TestCaseError> {
        down(self.b, buf).ctx("download")
    }
}

impl<B: Backend, I> Fill<B> for Fuzz<'_, B, I> {
    fn vals(&self, len: Option<usize>) -> R<B::Buf> {
        up(self.b, &self.f.vals(len))
    }
    fn idx(&self, len: Option<usize>, bound: usize) -> R<B::IdxBuf> {
        self.b.idx_upload(&self.f.idx(len, bound))
    }
}

/// Runs the fuzz check `name` on the backend `make` builds: [`CASES`] cases of `strategy` (a
/// value and the pool its buffers come from), `body` on each value with its [`Fuzz`] case.
/// Returns whether the backend was available (the check is skipped otherwise, see
/// [`acquire`]).
pub fn fuzz_check<B: Backend, V: Debug>(
    make: &dyn Fn() -> Option<B>,
    name: &str,
    strategy: impl Strategy<Value = (V, Pool)>,
    body: impl Fn(&Fuzz<'_, B, (V, Pool)>, &V) -> CaseResult,
) -> bool {
    let Some(b) = acquire(make, name) else {
        return false;
    };
    run_prop(name, CASES, strategy, |input| {
        let (b, f) = (&b, Filler::new(&input.1));
        body(
            &Fuzz {
                b,
                input: &input,
                f,
            },
            &input.0,
        )
    });
    true
}
