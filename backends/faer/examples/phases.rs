//! Times a router training step on the faer backend and each of its phases.
//!
//! `cargo run --release -p simbal-faer --example phases -- N D E K [f32|f64]`
//! (defaults: 4096 768 64 4 f32). Also times faer's own parallel GEMM on the step's three
//! GEMM shapes, for comparison with the backend's row/column split. Each kernel is timed with
//! core's argument check included (an index scan for dispatch and backward rows).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::router::kernels::{
    BackwardRequest, Dispatch, Logits, Route, RouteRequest, RouterBackward,
};
use simbal_core::tokens::Groups;
use simbal_core::zloss::LseSqSum;
use simbal_core::{
    orthogonal_init, Backend, Gemm, GemmArgs, LblConfig, LossConfig, Reference, Rng, Router,
    RouterConfig, WeightLayout, ZLossConfig,
};
use simbal_faer::{Faer, FaerElem, Par};
use std::hint::black_box;
use std::time::Instant;

/// Median seconds of `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// `c = gemm(a, b)` on a host backend.
fn gemm<T, B: Backend<Elem = T, View = [T]>>(be: &B, g: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    be.gemm(GemmArgs { gemm: *g, a, b, c }.check(be).expect("gemm args"))
        .expect("gemm");
}

/// What the forward rows write: scores, indices, gates.
type Routed<'a, T> = (&'a mut [T], &'a mut [u32], &'a mut [T]);

/// The forward rows of `z` (given logits) on a host backend.
fn route<T, B: Backend<Elem = T, View = [T], IdxView = [u32]>>(
    be: &B,
    cfg: &RouterConfig,
    n: usize,
    z: &mut [T],
    (p, idx, gates): Routed<'_, T>,
) {
    let a = Route {
        cfg,
        n,
        logits: Logits::Given,
        bias: None,
        z,
        p,
        idx,
        gates,
        plain: None,
        request: RouteRequest::default(),
    };
    be.route(a.check(be).expect("route args")).expect("route");
}

/// faer's own parallel GEMM `c = lhs rhs` (`c` row-major `m x n`).
fn native<T: FaerElem>(c: &mut [T], m: usize, n: usize, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>) {
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(dst, Accum::Replace, lhs, rhs, T::one(), Par::rayon(0));
}

fn run<T: FaerElem>(n: usize, d: usize, e: usize, k: usize) {
    let reps = 21;
    let mut rng = Rng::new(1);
    let mut x = vec![T::zero(); n * d];
    rng.fill_normal(1.0, &mut x);
    let r: Vec<T> = orthogonal_init(WeightLayout::DxE, d, e, 2).expect("init");
    let mut dw = vec![T::zero(); n * k];
    rng.fill_normal(1.0, &mut dw);
    let be = Faer::<T>::new();
    let cfg = RouterConfig::new(e, k).with_check_finite(false);
    println!(
        "N={n} D={d} E={e} k={k} {} threads={}",
        T::NAME,
        rayon::current_num_threads()
    );
    let ms = |s: f64| s * 1e3;
    // The benchmark's objective: SimBal + LBL + z-loss.
    let all = LossConfig::simbal()
        .with_lbl(LblConfig::default())
        .with_z_loss(ZLossConfig::default());
    let steps = [
        ("step (no finite check)", false, LossConfig::simbal()),
        ("step (finite check)", true, LossConfig::simbal()),
        ("step (+LBL, z-loss)", true, all),
    ];
    for (what, check, losses) in steps {
        let mut router = Router::new(be, cfg.with_check_finite(check)).expect("router");
        let t = time(reps, || {
            let mut pass = router.forward(&x, &r, None).expect("forward");
            black_box(pass.backward(&dw, &losses, None).expect("backward").losses);
        });
        println!("  {what:<24} {:8.3} ms", ms(t));
    }

    let mut z = vec![T::zero(); n * e];
    let mut dx = vec![T::zero(); n * d];
    let mut dr = vec![T::zero(); d * e];
    let (mut p, mut idx, mut gates) = (
        vec![T::zero(); n * e],
        vec![0u32; n * k],
        vec![T::zero(); n * k],
    );
    let (mut dropped, mut counts, mut order, mut offsets) = (
        vec![0u32; n * k],
        vec![0u32; e],
        vec![0u32; n * k],
        vec![0u32; e + 1],
    );
    let mut dz = vec![T::zero(); n * e];
    let gz = Gemm::new(n, e, d);
    let gdx = Gemm::new(n, d, e).tb();
    let gdr = Gemm::new(d, e, n).ta();
    let t_z = time(reps, || gemm(&be, &gz, &x, &r, &mut z));
    let t_fused = time(reps, || {
        let a = Route {
            cfg: &cfg,
            n,
            logits: Logits::Tokens {
                gemm: gz,
                x: &x[..],
                r: &r[..],
            },
            bias: None,
            z: &mut z[..],
            p: &mut p[..],
            idx: &mut idx[..],
            gates: &mut gates[..],
            plain: None,
            request: RouteRequest::default(),
        };
        be.route(a.check(&be).expect("route args")).expect("route");
    });
    let mut rows = |be: &dyn Fn(&mut [T], Routed<'_, T>)| {
        time(reps, || be(&mut z, (&mut p, &mut idx, &mut gates)))
    };
    let seq = Faer::<T>::with_par(Par::Seq);
    let reference = Reference::<T>::new();
    let t_route = rows(&|z, out| route(&be, &cfg, n, z, out));
    let t_route_seq = rows(&|z, out| route(&seq, &cfg, n, z, out));
    let t_route_ref = rows(&|z, out| route(&reference, &cfg, n, z, out));
    let t_disp = time(reps, || {
        let a = Dispatch {
            cfg: &cfg,
            n,
            idx: &idx[..],
            gates: &mut gates[..],
            dropped: &mut dropped[..],
            counts: &mut counts[..],
            order: &mut order[..],
            offsets: &mut offsets[..],
        };
        be.dispatch(a.check(&be).expect("dispatch args"))
            .expect("dispatch");
    });
    // Backward rows without and with the z-loss term (z_coef = 0 and 1e-3) and its sum.
    let mut bwd = |z_coef: T| {
        time(reps, || {
            let a = RouterBackward {
                cfg: &cfg,
                n,
                z: &z[..],
                p: &p[..],
                idx: &idx[..],
                gates: &gates[..],
                dropped: &dropped[..],
                dw: &dw[..],
                groups: Groups::whole(n),
                lbl: None,
                z_coef,
                dz: &mut dz[..],
                request: BackwardRequest {
                    lse_sq_sum: z_coef != T::zero(),
                    max_abs_dz: false,
                },
            };
            black_box(
                be.router_backward(a.check(&be).expect("args"))
                    .expect("backward rows"),
            );
        })
    };
    let (t_bwd, t_bwd_z) = (bwd(T::zero()), bwd(T::of(1e-3)));
    let t_lse = time(reps, || {
        let a = LseSqSum {
            n,
            groups: Groups::whole(n),
            e,
            z: &z[..],
            scores: None,
        };
        black_box(be.lse_sq_sum(a.check(&be).expect("args")).expect("lse"));
    });
    let mut sums = vec![T::zero(); e];
    let t_sums = time(reps, || {
        let a = GroupSums {
            n,
            cols: e,
            groups: Groups::whole(n),
            normalize: false,
            a: &p[..],
            out: &mut sums[..],
        };
        be.group_column_sums(a.check(&be).expect("args"))
            .expect("sums");
    });
    let t_maxabs = time(reps, || {
        black_box(be.max_abs(&z).expect("max"));
    });
    let t_dx = time(reps, || gemm(&be, &gdx, &dz, &r, &mut dx));
    let t_dr = time(reps, || gemm(&be, &gdr, &x, &dz, &mut dr));
    let t_fin = time(reps, || be.check_finite("X", d, &x).expect("finite"));
    println!("  Z = X R                  {:8.3} ms", ms(t_z));
    println!("  Z = X R fused with route {:8.3} ms", ms(t_fused));
    println!(
        "  route rows sequential    {:8.3} ms (reference kernel {:.3} ms)",
        ms(t_route_seq),
        ms(t_route_ref)
    );
    println!("  route rows               {:8.3} ms", ms(t_route));
    println!("  dispatch                 {:8.3} ms", ms(t_disp));
    println!("  router backward rows     {:8.3} ms", ms(t_bwd));
    println!("  backward rows + z-loss   {:8.3} ms", ms(t_bwd_z));
    println!("  lse_sq_sum               {:8.3} ms", ms(t_lse));
    println!("  column sums of P         {:8.3} ms", ms(t_sums));
    println!("  max_abs(Z)               {:8.3} ms", ms(t_maxabs));
    println!("  dX = dZ R^T              {:8.3} ms", ms(t_dx));
    println!("  dR = X^T dZ              {:8.3} ms", ms(t_dr));
    let t_copy = time(reps, || dx.copy_from_slice(&x));
    println!(
        "  check_finite(X)          {:8.3} ms (copying X takes {:.3} ms)",
        ms(t_fin),
        ms(t_copy)
    );

    // faer's own parallel GEMM on the same shapes, for comparison.
    let native_z = time(reps, || {
        let (a, b) = (
            MatRef::from_row_major_slice(&x, n, d),
            MatRef::from_row_major_slice(&r, d, e),
        );
        native(&mut z, n, e, a, b)
    });
    let native_dx = time(reps, || {
        let (a, b) = (
            MatRef::from_row_major_slice(&dz, n, e),
            MatRef::from_column_major_slice(&r, e, d),
        );
        native(&mut dx, n, d, a, b)
    });
    let native_dr = time(reps, || {
        let (a, b) = (
            MatRef::from_column_major_slice(&x, d, n),
            MatRef::from_row_major_slice(&dz, n, e),
        );
        native(&mut dr, d, e, a, b)
    });
    println!(
        "  faer native par: Z {:.3} ms, dX {:.3} ms, dR {:.3} ms",
        ms(native_z),
        ms(native_dx),
        ms(native_dr)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, d, e, k) = (num(0, 4096), num(1, 768), num(2, 64), num(3, 4));
    match args.get(4).map(String::as_str) {
        Some("f64") => run::<f64>(n, d, e, k),
        _ => run::<f32>(n, d, e, k),
    }
}
