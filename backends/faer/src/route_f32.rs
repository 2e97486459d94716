//! The `f32` forward row kernel: vectorised softmax, then a top-k on packed integer keys.
//!
//! Each expert's selection key `p_c + b_c` becomes one `u64`: the key's bits mapped to an
//! unsigned integer of the same order in the high half, `u32::MAX - c` in the low half. The
//! largest packed value is then the best expert with ties to the lower index, exactly core's total
//! order ("higher score first, then lower index"; NaN ranks as `-inf`; `-0 = +0`), and each of the
//! `k` picks is one integer max over the row, which the compiler vectorises without branches
//! (the insertion top-k mispredicts on every entry). Keys are distinct, so each pick is the
//! largest key below the previous pick.

use crate::exp_f32::softmax_row;
use crate::route_generic::ForwardRows;
use pulp::{Arch, Simd, WithSimd};
use simbal_core::config::ScoreFn;
use simbal_core::router::score::score_row;
use simbal_core::router::select::gates_row;

/// Largest `E` whose packed keys live on the stack.
pub(crate) const MAX_PACKED_E: usize = 512;

/// `f32` to `u32` with the same order: `-inf` < negatives < `0` < positives < `inf`; `-0` maps as
/// `+0`, NaN as `-inf`.
#[inline(always)]
fn ordered_bits(v: f32) -> u32 {
    let v = if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v + 0.0
    };
    let b = v.to_bits();
    // Negative: flip every bit (larger magnitude, smaller key); positive: set the sign bit.
    let mask = ((b as i32) >> 31) as u32 | 0x8000_0000;
    b ^ mask
}

/// Key of expert `c` with score `v`: [`ordered_bits`] in the high half (as a signed integer of
/// the same order: signed maxima vectorise on more instruction sets), `u32::MAX - c` below.
#[inline(always)]
fn packed(v: f32, c: usize) -> i64 {
    let high = (ordered_bits(v) ^ 0x8000_0000) as i32 as i64;
    (high << 32) | (u32::MAX - c as u32) as i64
}

/// The `idx.len()` best experts of one row, best first, ties to the lower index; the keys are
/// `p + bias`. `keys` is scratch of `p.len()` entries (overwritten), `idx.len() <= p.len()`.
#[inline(always)]
fn top_k_packed(p: &[f32], bias: Option<&[f32]>, keys: &mut [i64], idx: &mut [u32]) {
    match bias {
        Some(b) => {
            for (c, (kv, (&pv, &bv))) in keys.iter_mut().zip(p.iter().zip(b)).enumerate() {
                *kv = packed(pv + bv, c);
            }
        }
        None => {
            for (c, (kv, &pv)) in keys.iter_mut().zip(p).enumerate() {
                *kv = packed(pv, c);
            }
        }
    }
    // Packed keys are distinct, so the j-th pick is the largest key below the (j-1)-th: no
    // stores between passes (a store into `keys` would stall the next pass's vector loads).
    let mut prev = i64::MAX;
    for slot in idx.iter_mut() {
        let best = max_below(keys, prev);
        *slot = u32::MAX - best as u32;
        prev = best;
    }
}

/// Lanes of the max reduction: independent accumulators, so the passes do not wait on one chain.
const LANES: usize = 8;

/// Largest key below `bound` (`i64::MIN` if none).
#[inline(always)]
fn max_below(keys: &[i64], bound: i64) -> i64 {
    let mut acc = [i64::MIN; LANES];
    let mut chunks = keys.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = if v < bound { v } else { i64::MIN };
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = i64::MIN;
    for &v in chunks.remainder() {
        if v < bound && v > m {
            m = v;
        }
    }
    // Pairwise tree (vector halves) instead of a serial fold over the lanes.
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = if acc[i + w] > acc[i] {
                acc[i + w]
            } else {
                acc[i]
            };
        }
    }
    if acc[0] > m {
        acc[0]
    } else {
        m
    }
}

/// A block of rows for [`Arch::dispatch`].
struct Packed<'a>(ForwardRows<'a, f32>);

impl WithSimd for Packed<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Packed(mut x) = self;
        let (cfg, bias, k) = (x.cfg, x.bias, x.cfg.k);
        let mut plain = x.plain.take();
        let softmax = cfg.score == ScoreFn::Softmax;
        // Scratch for the whole block: filling 4 KiB per row would cost more than the top-k.
        let mut keys = [0i64; MAX_PACKED_E];
        let keys = &mut keys[..cfg.experts];
        for (r, (zr, pr, ir, wr)) in x.rows().enumerate() {
            if softmax {
                softmax_row(zr, pr);
            } else {
                score_row(cfg.score, zr, pr);
            }
            top_k_packed(pr, bias, keys, ir);
            gates_row(cfg, pr, ir, wr);
            if let Some(pl) = plain.as_deref_mut() {
                // The plain top-k: the packed keys without the bias (no group limit here, so
                // without a bias it is the selection).
                let pl = &mut pl[r * k..(r + 1) * k];
                if bias.is_some() {
                    top_k_packed(pr, None, keys, pl);
                } else {
                    pl.copy_from_slice(ir);
                }
            }
        }
    }
}

/// Forward rows of a block (same contract and results as core's `route_rows`) for a config
/// without an effective group limit and `E <= MAX_PACKED_E`.
pub(crate) fn route_rows(x: ForwardRows<'_, f32>) {
    Arch::new().dispatch(Packed(x));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Core's order, spelled out: higher key first, then lower index; NaN as `-inf`.
    fn naive(p: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<u32> {
        let key = |c: usize| {
            let s = p[c] + bias.map_or(0.0, |b| b[c]);
            if s.is_nan() {
                f32::NEG_INFINITY
            } else {
                s
            }
        };
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap().then(a.cmp(&b)));
        order[..k].iter().map(|&c| c as u32).collect()
    }

    #[test]
    fn ordered_bits_keeps_float_order() {
        let vals = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            1e30,
            f32::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(
                ordered_bits(w[0]) < ordered_bits(w[1]),
                "{} vs {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(ordered_bits(-0.0), ordered_bits(0.0));
        assert_eq!(ordered_bits(f32::NAN), ordered_bits(f32::NEG_INFINITY));
        assert!(packed(f32::NEG_INFINITY, MAX_PACKED_E) > i64::MIN);
    }

    #[test]
    fn top_k_matches_the_total_order() {
        // Ties, signed zeros, NaN, infinities, with and without bias.
        let pool = [
            0.25f32,
            0.25,
            0.0,
            -0.0,
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            1e-40,
            -1e-40,
            0.5,
            -0.5,
            0.125,
        ];
        let mut s = 0x9E37_79B9u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for trial in 0..2000 {
            let e = 1 + (next() % 40) as usize;
            let k = 1 + (next() % e as u64) as usize;
            let p: Vec<f32> = (0..e)
                .map(|_| pool[(next() % pool.len() as u64) as usize])
                .collect();
            let b: Vec<f32> = (0..e)
                .map(|_| pool[(next() % pool.len() as u64) as usize])
                .collect();
            let bias = (trial % 2 == 1).then_some(b.as_slice());
            let mut idx = vec![0u32; k];
            top_k_packed(&p, bias, &mut vec![0; e], &mut idx);
            assert_eq!(idx, naive(&p, bias, k), "p {p:?} bias {bias:?} k {k}");
        }
    }

    #[test]
    fn top_k_handles_the_largest_packed_width() {
        let e = MAX_PACKED_E;
        let p: Vec<f32> = (0..e).map(|c| ((c * 7919) % 257) as f32).collect();
        let mut idx = vec![0u32; 8];
        top_k_packed(&p, None, &mut vec![0; e], &mut idx);
        assert_eq!(idx, naive(&p, None, 8));
    }
}
