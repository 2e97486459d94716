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
//! - `route_rows` (the forward kernel): finite scores and gates from finite logits and bias with
//!   a valid configuration and a scale representable in the element type.
//! - Every other kernel and memory primitive: no panic (their outputs may legitimately overflow,
//!   e.g. a GEMM of 1e30s in `f32`; the ops above turn that into `Err`).
//!
//! Sizes are chosen so that nothing asks for an impossible allocation: a shape whose product does
//! not overflow but is huge is only used against buffers of the wrong length, which every entry
//! point checks before allocating.

use crate::run::{loss_array, read_forward};
use crate::util::*;
use proptest::prelude::*;
use proptest::sample::select;
use simbal_core::metrics::softmax_rows;
use simbal_core::{
    orthogonal_init, orthogonality_error, pes, routing_entropy, seu, simbal_loss, update_bias,
    Backend, BiasUpdateConfig, Capacity, DropPolicy, Gemm, GroupLimit, LblCoef, LblConfig,
    LblLevel, LblNormalization, LoadMetrics, LossConfig, Router, RouterConfig, RoutingStats,
    Scalar, ScoreFn, SimBalConfig, SimBalNorm, SimbalWorkspace, WeightLayout, ZLossConfig,
};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Number of cases of each fuzz property.
pub const CASES: u32 = 64;

/// Largest buffer the fuzz allocates.
const MAX_LEN: usize = 4096;

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
            prop_oneof![Just(ScoreFn::Softmax), Just(ScoreFn::Sigmoid)],
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
                    capacity: capacity.map(|(factor, policy)| Capacity { factor, policy }),
                    layout,
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
        Just(LblLevel::MicroBatch),
        dim().prop_map(|seq_len| LblLevel::Sequence { seq_len }),
        Just(LblLevel::GlobalBatch),
    ];
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
struct Filler<'a> {
    pool: &'a Pool,
    next: std::cell::Cell<usize>,
}

impl<'a> Filler<'a> {
    fn new(pool: &'a Pool) -> Self {
        Self {
            pool,
            next: std::cell::Cell::new(0),
        }
    }
    /// The length of the next buffer: the shape's (if computable and small) unless overridden.
    fn len(&self, shape: Option<usize>) -> usize {
        let i = self.next.get();
        self.next.set(i + 1);
        match (self.pool.lens[i % self.pool.lens.len()], shape) {
            (Some(l), _) => l,
            (None, Some(l)) if l <= MAX_LEN => l,
            (None, _) => 3,
        }
    }
    fn vals(&self, shape: Option<usize>) -> Vec<f64> {
        let l = self.len(shape);
        let v = &self.pool.values;
        let off = self.next.get() * 7;
        (0..l).map(|i| v[(off + i) % v.len()]).collect()
    }
    fn idx(&self, shape: Option<usize>, e: usize) -> Vec<u32> {
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

fn mul(a: usize, b: usize) -> Option<usize> {
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

fn all_finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// A finite-result requirement: `what` returned `Ok` with non-finite values.
fn must_be_finite(what: &str, input: &dyn Debug, v: &[f64]) -> CaseResult {
    ensure(all_finite(v), || {
        format!("{what} returned Ok with non-finite values {v:?}\n  input: {input:#?}")
    })
}

/// Whether a coefficient is representable in `T` (the element type the backend computes in).
fn fits<T: Scalar>(x: f64) -> bool {
    T::of(x).is_finite()
}

/// `Router::new`, `forward`, `forward_logits`, `backward`, `backward_logits`, `step`, `stats`,
/// `load_metrics`, `routing_entropy`, `set_config` on arbitrary input.
pub fn router<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fuzz::router";
    if acquire(make, NAME).is_none() {
        return;
    }
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            Just((n, d, e)),
            router_config(e),
            losses(),
            prop::option::of(stats()),
            any::<bool>(),
            pool(),
        )
    });
    let reached = std::sync::atomic::AtomicUsize::new(0);
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, d, e), cfg, losses, global, with_bias, pool) = &input;
        let (n, d, e) = (*n, *d, *e);
        let k = cfg.k;
        let f = Filler::new(pool);
        let created = guard("Router::new", &input, || Router::new(fresh(make), *cfg))?;
        let Ok(mut router) = created else {
            return Ok(());
        };
        let checked = cfg.check_finite;
        let b = router.backend();
        let up_ = |v: Vec<f64>| up(b, &v).ctx("upload");
        let wshape = mul(d, e);
        let x = up_(f.vals(mul(n, d)))?;
        let r = up_(f.vals(wshape))?;
        let z = up_(f.vals(mul(n, e)))?;
        let dw = up_(f.vals(mul(n, k)))?;
        let bias = if *with_bias {
            Some(up_(f.vals(Some(e)))?)
        } else {
            None
        };
        let global = global.as_ref();
        // Outputs of a successful call must be finite when the check is on.
        let check_fwd = |router: &Router<B>, what: &str| -> CaseResult {
            if checked {
                let fw = read_forward(router).ctx("read forward")?;
                for (name, v) in [("logits", &fw.z), ("scores", &fw.p), ("gates", &fw.gates)] {
                    must_be_finite(&format!("{what}: {name}"), &input, v)?;
                }
            }
            Ok(())
        };
        let check_bwd = |router: &Router<B>, what: &str, v: [f64; 4], tokens: bool| -> CaseResult {
            if checked {
                must_be_finite(&format!("{what}: loss values"), &input, &v)?;
                let b = router.backend();
                must_be_finite(
                    &format!("{what}: dZ"),
                    &input,
                    &down(b, router.dz().ctx("dz")?).ctx("dz")?,
                )?;
                if tokens {
                    must_be_finite(
                        &format!("{what}: dX"),
                        &input,
                        &down(b, router.dx().ctx("dx")?).ctx("dx")?,
                    )?;
                    must_be_finite(
                        &format!("{what}: dR"),
                        &input,
                        &down(b, router.dr().ctx("dr")?).ctx("dr")?,
                    )?;
                }
            }
            Ok(())
        };
        // Tokens path.
        if guard("forward", &input, || {
            router.forward(&x, &r, bias.as_ref(), n, d)
        })?
        .is_ok()
        {
            check_fwd(&router, "forward")?;
            if let Ok(s) = guard("stats", &input, || router.stats())? {
                if checked {
                    must_be_finite("stats score sums", &input, &s.score_sums)?;
                }
            }
            guard("load_metrics", &input, || router.load_metrics())?.ok();
            if let Ok(h) = guard("routing_entropy", &input, || router.routing_entropy())? {
                if checked {
                    must_be_finite("routing_entropy", &input, &[h.to_f64_lossy()])?;
                }
            }
        }
        if let Ok(v) = guard("backward", &input, || {
            router.backward(&x, &r, &dw, losses, global)
        })? {
            reached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            check_bwd(&router, "backward", loss_array(&v), true)?;
        }
        if let Ok(v) = guard("step", &input, || {
            router.step(&x, &r, bias.as_ref(), &dw, losses, global, n, d)
        })? {
            check_fwd(&router, "step")?;
            check_bwd(&router, "step", loss_array(&v), true)?;
        }
        // Logits path.
        if guard("forward_logits", &input, || {
            router.forward_logits(&z, bias.as_ref(), n)
        })?
        .is_ok()
        {
            check_fwd(&router, "forward_logits")?;
        }
        if let Ok(v) = guard("backward_logits", &input, || {
            router.backward_logits(&dw, losses, global)
        })? {
            check_bwd(&router, "backward_logits", loss_array(&v), false)?;
        }
        guard("stats_into", &input, || {
            let mut s = RoutingStats::empty(2);
            router.stats_into(&mut s)
        })?
        .ok();
        // Reconfiguration with the same arbitrary config, then the accessors.
        guard("set_config", &input, || router.set_config(*cfg))?.ok();
        guard("accessors", &input, || {
            (
                router.indices().is_ok(),
                router.dz().is_ok(),
                router.dispatch_order().is_ok(),
            )
        })?;
        Ok(())
    });
    // Not vacuous: some arbitrary cases must get all the way through a backward pass.
    let reached = reached.into_inner();
    assert!(
        reached * 20 >= cases(CASES) as usize,
        "{NAME}: only {reached} cases reached a successful backward; the fuzz is too hostile"
    );
}

/// `simbal_loss`, `update_bias` and `RoutingStats::merge` on arbitrary input.
pub fn losses_and_stats<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fuzz::losses_and_stats";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = (
        (dim(), dim()),
        (
            coef(),
            prop_oneof![
                Just(SimBalNorm::L1),
                Just(SimBalNorm::FrobeniusSq),
                Just(SimBalNorm::ScaleFree)
            ],
        ),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        any::<bool>(),
        (coef(), any::<bool>()),
        (stats(), stats()),
        pool(),
    );
    run_prop(NAME, CASES, strategy, |input| {
        let ((d, e), (lambda, norm), layout, with_grad, (rate, centred), (s1, s2), pool) = &input;
        let (d, e) = (*d, *e);
        let f = Filler::new(pool);
        let cfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let rv = rounded::<B::Elem>(&f.vals(mul(d, e)));
        let gv = rounded::<B::Elem>(&f.vals(mul(d, e)));
        let r = up(&b, &rv).ctx("upload")?;
        let mut g = up(&b, &gv).ctx("upload")?;
        let mut ws = SimbalWorkspace::new(&b, 1, 1).ctx("workspace")?;
        let res = guard("simbal_loss", &input, || {
            simbal_loss(
                &b,
                &cfg,
                *layout,
                d,
                e,
                &r,
                with_grad.then_some(&mut g),
                &mut ws,
            )
        })?;
        if let Ok(l) = res {
            if all_finite(&rv) && all_finite(&gv) && fits::<B::Elem>(*lambda) {
                must_be_finite("simbal_loss value", &input, &[l.to_f64_lossy()])?;
                must_be_finite(
                    "simbal_loss gradient",
                    &input,
                    &down(&b, &g).ctx("download")?,
                )?;
            }
        }
        // update_bias from arbitrary statistics.
        let bv = rounded::<B::Elem>(&f.vals(Some(s1.counts.len())));
        let mut bias = up(&b, &bv).ctx("upload")?;
        let ucfg = BiasUpdateConfig {
            rate: *rate,
            centred: *centred,
        };
        if guard("update_bias", &input, || {
            update_bias(&b, &ucfg, s1, &mut bias)
        })?
        .is_ok()
            && all_finite(&bv)
            && rate.abs() <= 1e30
        {
            must_be_finite(
                "update_bias result",
                &input,
                &down(&b, &bias).ctx("download")?,
            )?;
        }
        // merge.
        let mut a = s1.clone();
        if guard("RoutingStats::merge", &input, || a.merge(s2))?.is_ok() {
            let want: Vec<u64> = s1
                .counts
                .iter()
                .zip(&s2.counts)
                .map(|(x, y)| x.saturating_add(*y))
                .collect();
            same("merged counts (saturating)", &a.counts, &want)?;
        }
        guard("RoutingStats::clear", &input, || a.clear())?;
        Ok(())
    });
}

/// The metrics functions and `orthogonal_init` on arbitrary input.
pub fn metrics<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fuzz::metrics";
    if acquire(make, NAME).is_none() {
        return;
    }
    let strategy = (
        (dim(), dim(), dim(), dim()),
        prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
        prop::collection::vec(prop_oneof![4 => 0..30u64, 1 => Just(u64::MAX)], 0..=6),
        any::<u64>(),
        pool(),
    );
    run_prop(NAME, CASES, strategy, |input| {
        let ((n, e, k, d), layout, counts, seed, pool) = &input;
        let (n, e, k, d) = (*n, *e, *k, *d);
        let f = Filler::new(pool);
        let p = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let pf = to_f64(&p);
        if let Ok(h) = guard("routing_entropy", &input, || routing_entropy(n, e, &p))? {
            if all_finite(&pf) {
                must_be_finite("routing_entropy", &input, &[h.to_f64_lossy()])?;
            }
        }
        let idx = f.idx(mul(n, k), e);
        let dropped = f.idx(mul(n, k), 1);
        let seq_len = f.len(Some(n.max(1)));
        if let Ok(v) = guard("seu", &input, || {
            seu(n, k, e, seq_len, &idx, Some(&dropped))
        })? {
            must_be_finite("seu", &input, &[v])?;
        }
        guard("seu without flags", &input, || {
            seu(n, k, e, seq_len, &idx, None)
        })?
        .ok();
        let outs = to_elems::<B::Elem>(&f.vals(mul(e, n).and_then(|x| mul(x, d))));
        if let Ok(v) = guard("pes", &input, || pes(e, n, d, &outs))? {
            if all_finite(&to_f64(&outs)) {
                must_be_finite("pes", &input, &[v.to_f64_lossy()])?;
            }
        }
        let r = to_elems::<B::Elem>(&f.vals(mul(d, e)));
        if let Ok((a, m)) = guard("orthogonality_error", &input, || {
            orthogonality_error(*layout, d, e, &r)
        })? {
            if all_finite(&to_f64(&r)) {
                must_be_finite(
                    "orthogonality_error",
                    &input,
                    &[a.to_f64_lossy(), m.to_f64_lossy()],
                )?;
            }
        }
        let z = to_elems::<B::Elem>(&f.vals(mul(n, e)));
        let mut out = vec![B::Elem::of(0.0); f.len(mul(n, e))];
        if guard("softmax_rows", &input, || softmax_rows(e, &z, &mut out))?.is_ok()
            && all_finite(&to_f64(&z))
        {
            must_be_finite("softmax_rows", &input, &to_f64(&out))?;
        }
        let m = guard("LoadMetrics::from_counts", &input, || {
            LoadMetrics::from_counts(counts)
        })?;
        must_be_finite("LoadMetrics", &input, &[m.max_vio, m.cv, m.load_entropy])?;
        must_be_finite("LoadMetrics fractions", &input, &m.fractions)?;
        // orthogonal_init allocates D x E: only shapes that are small or overflow.
        if mul(d, e).is_none_or(|x| x <= MAX_LEN) {
            if let Ok(w) = guard("orthogonal_init", &input, || {
                orthogonal_init::<B::Elem>(*layout, d, e, *seed)
            })? {
                must_be_finite("orthogonal_init", &input, &to_f64(&w))?;
            }
        }
        Ok(())
    });
}

/// Every `Backend` kernel and memory primitive on arbitrary shapes, lengths and values.
pub fn kernels<B: Backend>(make: &dyn Fn() -> Option<B>) {
    const NAME: &str = "fuzz::kernels";
    let Some(b) = acquire(make, NAME) else { return };
    let strategy = dims().prop_flat_map(|(n, d, e)| {
        (
            Just((n, d, e)),
            router_config(e),
            (
                dim(),
                dim(),
                any::<bool>(),
                any::<bool>(),
                select(vec![0.0, 1.0, 0.5, f64::NAN, 1e300]),
            ),
            (
                dim(),
                coef(),
                prop_oneof![
                    Just(SimBalNorm::L1),
                    Just(SimBalNorm::FrobeniusSq),
                    Just(SimBalNorm::ScaleFree)
                ],
            ),
            prop_oneof![Just(WeightLayout::DxE), Just(WeightLayout::ExD)],
            pool(),
            (coef(), any::<bool>(), 0..=4usize),
        )
    });
    run_prop(NAME, CASES, strategy, |input| {
        let (
            (n, d, e),
            cfg,
            (gm, gn, ta, tb, beta),
            (group_len, lambda, norm),
            layout,
            pool,
            (alpha, hf, score_tokens),
        ) = &input;
        let (n, d, e, k, gl) = (*n, *d, *e, cfg.k, *group_len);
        let f = Filler::new(pool);
        let ub = |v: Vec<f64>| up(&b, &v).ctx("upload");
        let ui = |v: Vec<u32>| b.idx_upload(&v).ctx("idx_upload");
        // Memory primitives with mismatched lengths.
        let mut host = vec![B::Elem::of(0.0); f.len(Some(2))];
        let mut buf = ub(f.vals(Some(3)))?;
        guard("download", &input, || b.download(&buf, &mut host))?.ok();
        guard("write", &input, || b.write(&mut buf, &host))?.ok();
        let mut ihost = vec![0u32; f.len(Some(2))];
        let mut ibuf = ui(f.idx(Some(3), 3))?;
        guard("idx_download", &input, || b.idx_download(&ibuf, &mut ihost))?.ok();
        guard("idx_write", &input, || b.idx_write(&mut ibuf, &ihost))?.ok();
        // gemm.
        let mut g = Gemm::new(*gm, *gn, d).alpha(1.5).beta(*beta);
        g.trans_a = *ta;
        g.trans_b = *tb;
        let a = ub(f.vals(mul(*gm, d)))?;
        let bm = ub(f.vals(mul(d, *gn)))?;
        let mut c = ub(f.vals(mul(*gm, *gn)))?;
        guard("gemm", &input, || b.gemm(&g, &a, &bm, &mut c))?.ok();
        // route_rows.
        let zv = f.vals(mul(n, e));
        let biasv = f.vals(Some(e));
        let z = ub(zv.clone())?;
        let bias = ub(biasv.clone())?;
        let mut p = ub(f.vals(mul(n, e)))?;
        let mut idx = ui(f.idx(mul(n, k), e))?;
        let mut gates = ub(f.vals(mul(n, k)))?;
        let routed = guard("route_rows", &input, || {
            b.route_rows(cfg, n, &z, Some(&bias), &mut p, &mut idx, &mut gates)
        })?;
        if routed.is_ok()
            && cfg.validate().is_ok()
            && all_finite(&rounded::<B::Elem>(&zv))
            && all_finite(&rounded::<B::Elem>(&biasv))
            && fits::<B::Elem>(cfg.scale)
            && cfg.scale.abs() <= 1e30
        {
            must_be_finite("route_rows scores", &input, &down(&b, &p).ctx("download")?)?;
            must_be_finite(
                "route_rows gates",
                &input,
                &down(&b, &gates).ctx("download")?,
            )?;
        }
        // dispatch.
        let mut dropped = ui(f.idx(mul(n, k), 2))?;
        let mut counts = ui(f.idx(Some(e), 3))?;
        let mut order = ui(f.idx(mul(n, k), 3))?;
        let mut offsets = ui(f.idx(e.checked_add(1), 3))?;
        guard("dispatch", &input, || {
            b.dispatch(
                cfg,
                n,
                &idx,
                &mut gates,
                &mut dropped,
                &mut counts,
                &mut order,
                &mut offsets,
            )
        })?
        .ok();
        // router_backward_rows.
        let dwb = ub(f.vals(mul(n, k)))?;
        let coef = ub(f.vals(mul(n / gl.max(1), e)))?;
        let mut dz = ub(f.vals(mul(n, e)))?;
        for lbl in [
            None,
            Some(LblCoef {
                coef: &coef,
                group_len: gl,
            }),
        ] {
            guard("router_backward_rows", &input, || {
                b.router_backward_rows(
                    cfg,
                    n,
                    &z,
                    &p,
                    &idx,
                    &gates,
                    &dropped,
                    &dwb,
                    lbl,
                    B::Elem::of(0.01),
                    &mut dz,
                )
            })?
            .ok();
        }
        guard("router_backward_rows_and_sums", &input, || {
            b.router_backward_rows_and_sums(
                cfg,
                n,
                &z,
                &p,
                &idx,
                &gates,
                &dropped,
                &dwb,
                Some(LblCoef {
                    coef: &coef,
                    group_len: gl,
                }),
                B::Elem::of(0.01),
                &mut dz,
                true,
                true,
            )
        })?
        .ok();
        // The fused forward: logits GEMM of the fuzzed shape into the routing buffers.
        let mut zf = ub(f.vals(mul(*gm, e)))?;
        guard("logits_and_route_rows", &input, || {
            b.logits_and_route_rows(
                cfg,
                &g,
                &a,
                &bm,
                Some(&bias),
                &mut zf,
                &mut p,
                &mut idx,
                &mut gates,
                true,
            )
        })?
        .ok();
        // Reductions.
        let mut sums = ub(f.vals(mul(n / gl.max(1), d)))?;
        guard("group_column_sums", &input, || {
            b.group_column_sums(n, d, gl, &z, &mut sums)
        })?
        .ok();
        let mut gc = ui(f.idx(mul(n / gl.max(1), e), 3))?;
        guard("group_counts", &input, || {
            b.group_counts(n, k, e, gl, &idx, &dropped, &mut gc)
        })?
        .ok();
        // lbl_coefficients (groups as the group counts above; `k = 0`, zero tokens, overflowing
        // `groups x E` included).
        let lcfg = LblConfig {
            alpha: *alpha,
            level: LblLevel::MicroBatch,
            normalization: if *hf {
                LblNormalization::HuggingFace
            } else {
                LblNormalization::Switch
            },
        };
        let scales = simbal_core::ops::lbl::LblScales {
            k,
            count_tokens: gl as f64,
            score_tokens: *score_tokens as f64,
            groups: n / gl.max(1),
        };
        let lsums = ub(f.vals(mul(n / gl.max(1), e)))?;
        let mut lcoef = ub(f.vals(mul(n / gl.max(1), e)))?;
        guard("lbl_coefficients", &input, || {
            b.lbl_coefficients(&lcfg, e, &scales, &gc, &lsums, &mut lcoef)
        })?
        .ok();
        guard("lse_sq_sum", &input, || b.lse_sq_sum(n, e, &z))?.ok();
        for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
            guard("lse_sq_sum_scored", &input, || {
                b.lse_sq_sum_scored(score, n, e, &z, &p)
            })?
            .ok();
        }
        guard("max_abs", &input, || b.max_abs(&z))?.ok();
        guard("routing_entropy (kernel)", &input, || {
            b.routing_entropy(n, e, &p)
        })?
        .ok();
        guard("check_finite", &input, || b.check_finite("fuzz", d, &z))?.ok();
        // SimBal kernels.
        let scfg = SimBalConfig {
            lambda: *lambda,
            norm: *norm,
        };
        let mut gram = ub(f.vals(mul(e, e)))?;
        guard("simbal_residual", &input, || {
            b.simbal_residual(&scfg, e, &mut gram)
        })?
        .ok();
        let r = ub(f.vals(mul(d, e)))?;
        let mut norms = ub(f.vals(Some(e)))?;
        let mut rn = ub(f.vals(mul(d, e)))?;
        guard("normalize_columns", &input, || {
            b.normalize_columns(*layout, d, e, &r, &mut norms, &mut rn)
        })?
        .ok();
        let gv = ub(f.vals(mul(d, e)))?;
        let mut grad = ub(f.vals(mul(d, e)))?;
        guard("scale_free_project", &input, || {
            b.scale_free_project(*layout, d, e, &rn, &norms, &gv, &mut grad)
        })?
        .ok();
        Ok(())
    });
}
