mod common;
use common::*;
use simbal_cubecl::kernels::dispatch::{dispatch, histogram, CapacityLimit};
use simbal_cubecl::kernels::DevBuf;

fn case(
    c: &cubecl::prelude::ComputeClient<R>,
    rng: &mut Rng,
    n: usize,
    e: usize,
    k: usize,
    cap: Option<(usize, bool)>,
) {
    // Skewed, distinct experts per token.
    let mut idx = Vec::with_capacity(n * k);
    for _ in 0..n {
        let mut row: Vec<u32> = Vec::new();
        while row.len() < k {
            let x = if rng.below(3) == 0 {
                rng.below(e.min(3))
            } else {
                rng.below(e)
            } as u32;
            if !row.contains(&x) {
                row.push(x);
            }
        }
        idx.extend(row);
    }
    let mut gates: Vec<f32> = (0..n * k).map(|_| rng.below(6) as f32 * 0.125).collect();
    if n * k > 5 {
        gates[3] = f32::NAN;
    }
    let (wg, wd, wc, wo, woff) = dispatch_reference(e, k, n, cap, &idx, &gates);
    let di = up_u32(c, &idx);
    let dg = up(c, &gates);
    let dd = DevBuf::<u32>::empty(c, n * k);
    let dc = DevBuf::<u32>::empty(c, e);
    let dor = DevBuf::<u32>::empty(c, n * k);
    let doff = DevBuf::<u32>::empty(c, e + 1);
    let limit = cap.map(|(per_expert, by_probs)| CapacityLimit {
        per_expert,
        by_probs,
    });
    dispatch(c, e, k, n, limit, &di, &dg, &dd, &dc, &dor, &doff).unwrap();
    let what = format!("n={n} e={e} k={k} cap={cap:?}");
    let got_g = down(c, &dg);
    for (i, (g, w)) in got_g.iter().zip(&wg).enumerate() {
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "{what}: gate {i}: {g} vs {w}"
        );
    }
    assert_eq!(down_u32(c, &dd), wd, "{what}: dropped");
    assert_eq!(down_u32(c, &dc), wc, "{what}: counts");
    assert_eq!(down_u32(c, &doff), woff, "{what}: offsets");
    assert_eq!(down_u32(c, &dor), wo, "{what}: order");
}

#[test]
fn dispatch_matches_reference() {
    let Some(c) = client() else { return };
    let mut rng = Rng::new(21);
    for &(n, e, k) in &[
        (1usize, 1usize, 1usize),
        (10, 4, 2),
        (300, 8, 2),
        (700, 32, 4),
        (100, 256, 8),
        (3000, 3, 1),
    ] {
        let avg = (n * k).div_ceil(e);
        for cap in [
            None,
            Some((avg, true)),
            Some((avg, false)),
            Some((avg / 2 + 1, true)),
            Some((1, true)),
            Some((1, false)),
            Some((n * k, true)),
        ] {
            case(&c, &mut rng, n, e, k, cap);
        }
    }
}

#[test]
fn group_histogram() {
    let Some(c) = client() else { return };
    let (n, k, e, seq) = (40, 2, 5, 10);
    let idx: Vec<u32> = (0..n * k).map(|a| ((a * 7) % e) as u32).collect();
    let dropped: Vec<u32> = (0..n * k).map(|a| (a % 5 == 0) as u32).collect();
    let out = DevBuf::<u32>::empty(&c, (n / seq) * e);
    histogram(
        &c,
        e,
        seq * k,
        &up_u32(&c, &idx),
        Some(&up_u32(&c, &dropped)),
        &out,
    )
    .unwrap();
    let mut want = vec![0u32; (n / seq) * e];
    for a in 0..n * k {
        if dropped[a] == 0 {
            want[(a / (seq * k)) * e + idx[a] as usize] += 1;
        }
    }
    assert_eq!(down_u32(&c, &out), want);
}
