//! Times a router training step on the faer backend and each of its phases.
//!
//! `cargo run --release -p simbal-faer --example phases -- N D E K [f32|f64]`
//! (defaults: 4096 768 64 4 f32). Also times faer's own parallel GEMM on the step's three
//! GEMM shapes, for comparison with the backend's row/column split.

use simbal_core::{
    orthogonal_init, Backend, Gemm, LossConfig, Rng, Router, RouterConfig, WeightLayout,
};
use simbal_faer::{Faer, FaerElem, Par};
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
    let losses = LossConfig::simbal();
    println!(
        "N={n} D={d} E={e} k={k} {} threads={}",
        T::NAME,
        rayon::current_num_threads()
    );
    let ms = |s: f64| s * 1e3;
    let mut router = Router::new(be, cfg).expect("router");
    let step = time(reps, || {
        router
            .step(&x, &r, None, &dw, &losses, None, n, d)
            .expect("step");
    });
    println!("  step (no finite check)   {:8.3} ms", ms(step));
    let mut router = Router::new(be, cfg.with_check_finite(true)).expect("router");
    let step_fc = time(reps, || {
        router
            .step(&x, &r, None, &dw, &losses, None, n, d)
            .expect("step");
    });
    println!("  step (finite check)      {:8.3} ms", ms(step_fc));
    // The benchmark's objective: SimBal + LBL + z-loss.
    let all = LossConfig::simbal()
        .with_lbl(simbal_core::LblConfig::default())
        .with_z_loss(simbal_core::ZLossConfig::default());
    let step_all = time(reps, || {
        router
            .step(&x, &r, None, &dw, &all, None, n, d)
            .expect("step");
    });
    println!("  step (+LBL, z-loss)      {:8.3} ms", ms(step_all));

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
    let t_z = time(reps, || be.gemm(&gz, &x, &r, &mut z).expect("gemm"));
    let t_route = time(reps, || {
        be.route_rows(&cfg, n, &z, None, &mut p, &mut idx, &mut gates)
            .expect("route")
    });
    let t_disp = time(reps, || {
        be.dispatch(
            &cfg,
            n,
            &idx,
            &mut gates,
            &mut dropped,
            &mut counts,
            &mut order,
            &mut offsets,
        )
        .expect("dispatch")
    });
    // Backward rows without and with the z-loss term (z_coef = 0 and 1e-3).
    let mut bwd = |z_coef: T| {
        time(reps, || {
            be.router_backward_rows(
                &cfg, n, &z, &p, &idx, &gates, &dropped, &dw, None, z_coef, &mut dz,
            )
            .expect("backward rows")
        })
    };
    let (t_bwd, t_bwd_z) = (bwd(T::zero()), bwd(T::of(1e-3)));
    let t_lse = time(reps, || {
        std::hint::black_box(be.lse_sq_sum(n, e, &z).expect("lse"));
    });
    let mut sums = vec![T::zero(); e];
    let t_sums = time(reps, || {
        be.group_column_sums(n, e, n, &p, &mut sums).expect("sums");
    });
    let t_maxabs = time(reps, || {
        std::hint::black_box(be.max_abs(&z).expect("max"));
    });
    let t_dx = time(reps, || be.gemm(&gdx, &dz, &r, &mut dx).expect("gemm"));
    let t_dr = time(reps, || be.gemm(&gdr, &x, &dz, &mut dr).expect("gemm"));
    let t_fin = time(reps, || be.check_finite("X", d, &x).expect("finite"));
    let seq = Faer::<T>::with_par(Par::Seq);
    let t_route_seq = time(reps, || {
        seq.route_rows(&cfg, n, &z, None, &mut p, &mut idx, &mut gates)
            .expect("route")
    });
    let reference = simbal_core::Reference::<T>::new();
    let t_route_ref = time(reps, || {
        reference
            .route_rows(&cfg, n, &z, None, &mut p, &mut idx, &mut gates)
            .expect("route")
    });
    println!("  Z = X R                  {:8.3} ms", ms(t_z));
    println!(
        "  route_rows sequential    {:8.3} ms (reference kernel {:.3} ms)",
        ms(t_route_seq),
        ms(t_route_ref)
    );
    println!("  route_rows               {:8.3} ms", ms(t_route));
    println!("  dispatch                 {:8.3} ms", ms(t_disp));
    println!("  router_backward_rows     {:8.3} ms", ms(t_bwd));
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
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef};
    let par = Par::rayon(0);
    let native_z = time(reps, || {
        matmul(
            MatMut::from_row_major_slice_mut(&mut z, n, e),
            Accum::Replace,
            MatRef::from_row_major_slice(&x, n, d),
            MatRef::from_row_major_slice(&r, d, e),
            T::one(),
            par,
        )
    });
    let native_dx = time(reps, || {
        matmul(
            MatMut::from_row_major_slice_mut(&mut dx, n, d),
            Accum::Replace,
            MatRef::from_row_major_slice(&dz, n, e),
            MatRef::from_column_major_slice(&r, e, d),
            T::one(),
            par,
        )
    });
    let native_dr = time(reps, || {
        matmul(
            MatMut::from_row_major_slice_mut(&mut dr, d, e),
            Accum::Replace,
            MatRef::from_column_major_slice(&x, d, n),
            MatRef::from_row_major_slice(&dz, n, e),
            T::one(),
            par,
        )
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
