mod common;
use common::*;
use simbal_core::lbl::kernels::GroupSums;
use simbal_core::tokens::Groups;
use simbal_cubecl::kernels::reduce::{first_non_finite, group_column_sums, RowStat};
use simbal_cubecl::kernels::util::{reduce_all, Whole};
use simbal_cubecl::kernels::DevBuf;

#[test]
fn group_column_sums_match() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(41);
    for &(n, cols, glen) in &[
        (1, 1, 1),
        (64, 32, 64),
        (60, 7, 20),
        (100, 70, 25),
        (33, 256, 11),
    ] {
        let a = rng.vec(n * cols);
        let mut out = DevBuf::<f32>::empty(&c, (n / glen) * cols);
        let da = up(&c, &a);
        let sums = GroupSums {
            n,
            cols,
            groups: Groups::Runs { len: glen },
            normalize: false,
            a: &da,
            out: &mut out,
        };
        group_column_sums(&c, &sums).unwrap();
        let mut want = vec![0.0f32; (n / glen) * cols];
        for t in 0..n {
            for j in 0..cols {
                want[(t / glen) * cols + j] += a[t * cols + j];
            }
        }
        assert_close(
            &format!("n={n} cols={cols} glen={glen}"),
            &down(&c, &out),
            &want,
            1e-5,
        );
    }
    let (a, out) = (&up(&c, &[0.0; 10]), &mut DevBuf::<f32>::empty(&c, 3));
    let uneven = GroupSums {
        n: 10,
        cols: 1,
        groups: Groups::Runs { len: 3 },
        normalize: false,
        a,
        out,
    };
    assert!(group_column_sums(&c, &uneven).is_err());
}

#[test]
fn lse_and_entropy_match() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(42);
    for &(n, e) in &[(1, 1), (50, 8), (33, 100), (7, 256)] {
        let z: Vec<f32> = rng.vec(n * e).iter().map(|v| v * 3.0).collect();
        let out = DevBuf::<f32>::empty(&c, 2);
        let dz = up(&c, &z);
        reduce_all(&c, Whole::Rows(RowStat::LseSq { n, e, z: &dz }), &out, 0).unwrap();
        let p: Vec<f32> = z.iter().map(|v| v.abs()).collect();
        let dp = up(&c, &p);
        reduce_all(&c, Whole::Rows(RowStat::Entropy { n, e, p: &dp }), &out, 1).unwrap();
        let mut lse = 0.0f32;
        let mut h = 0.0f32;
        for t in 0..n {
            let r = &z[t * e..(t + 1) * e];
            let m = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let l = m + r.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            lse += l * l;
            let pr = &p[t * e..(t + 1) * e];
            let s: f32 = pr.iter().sum();
            if s > 0.0 {
                for &v in pr {
                    let q = v / s;
                    if q > 0.0 {
                        h -= q * q.ln();
                    }
                }
            }
        }
        assert_close(
            &format!("n={n} e={e}"),
            &down(&c, &out),
            &[lse, h / n as f32],
            1e-5,
        );
    }
    // Huge logits: lse stays finite.
    let out = DevBuf::<f32>::empty(&c, 1);
    let z = up(&c, &[1e30, -1e30, 0.0]);
    let stat = RowStat::LseSq { n: 1, e: 3, z: &z };
    reduce_all(&c, Whole::Rows(stat), &out, 0).unwrap();
    assert!(down(&c, &out)[0].is_finite() || down(&c, &out)[0] == f32::INFINITY);
}

#[test]
fn first_non_finite_finds_the_first() {
    let Some(c) = client() else { return };
    let first = DevBuf::<u32>::empty(&c, 1);
    let mut x = vec![1.0f32; 5000];
    first_non_finite(&c, &up(&c, &x), &first).unwrap();
    assert_eq!(down_u32(&c, &first), vec![u32::MAX]);
    x[4000] = f32::NAN;
    x[1234] = f32::INFINITY;
    x[3000] = f32::NEG_INFINITY;
    first_non_finite(&c, &up(&c, &x), &first).unwrap();
    assert_eq!(down_u32(&c, &first), vec![1234]);
    x[1234] = 0.0;
    x[3000] = 0.0;
    first_non_finite(&c, &up(&c, &x), &first).unwrap();
    assert_eq!(down_u32(&c, &first), vec![4000]);
}
