//! The selection of the forward row kernel ([`super::router_forward`]): `k` rounds of arg-max over a row's keys in shared memory, each the best candidate strictly
//! after the previous pick in the total order "higher key, then lower index" (the reference's
//! scratch-free selection, so indices agree exactly for equal keys).

// Comptime flags guard runtime tests: nesting keeps the comptime branch separate.
#![allow(clippy::collapsible_if)]

use cubecl::prelude::*;

use super::router_forward::RowShape;
use super::util::{after, before, is_nan_bits, tree_argmax};
use super::NONE;

/// The better of the best pick so far `(bs, bi)` and the candidate `(s, i)` under [`before()`],
/// the candidate only when it may be picked (`ok`).
#[cube]
pub fn keep_best(ok: bool, s: f32, i: u32, bs: f32, bi: u32) -> (f32, u32) {
    let mut best_s = bs;
    let mut best_i = bi;
    if ok && before(s, i, bs, bi) {
        best_s = s;
        best_i = i;
    }
    (best_s, best_i)
}

/// The top-k of the row in this thread's slot `ty` into `chosen[ty * k..]` (lane 0 writes; index 0 where no
/// candidate is left), best first. Keys are `keys[ty * E + c]`; `raw`: they are scores, a NaN
/// ranking as `-inf` (`ninf`). `ng > 0`: only experts of the groups `adm` admits (groups of
/// `E / ng`). All threads of the cube must call it; `chosen` is read after a `sync_cube`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn pick_top_k(
    keys: &SharedMemory<f32>,
    #[comptime] raw: bool,
    adm: &SharedMemory<u32>,
    #[comptime] ng: usize,
    rs: &mut SharedMemory<f32>,
    ri: &mut SharedMemory<u32>,
    chosen: &mut SharedMemory<u32>,
    ninf: f32,
    #[comptime] row: RowShape,
) {
    // The layout of `row_thread`: lanes along x, the row's slot in the cube along y.
    let lane = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let e = comptime!(row.e);
    let k = comptime!(row.k);
    let lanes = comptime!(row.lanes);
    let glen = comptime!(row.e / ng.max(1));
    let pb = ty * e;
    let rb = ty * lanes;
    let mut prev_s = 0.0f32;
    let mut prev_i = NONE.runtime();
    for j in 0..k {
        let mut bs = ninf;
        let mut bi = NONE.runtime();
        let mut c = lane;
        while c < e {
            let mut s = keys[pb + c];
            if raw {
                if is_nan_bits(s) {
                    s = ninf;
                }
            }
            let ci = c as u32;
            let mut ok = after(prev_s, prev_i, s, ci);
            if comptime!(ng > 0) {
                if adm[ty * ng + c / glen] == 0 {
                    ok = false;
                }
            }
            let (ns, ni) = keep_best(ok, s, ci, bs, bi);
            bs = ns;
            bi = ni;
            c += lanes;
        }
        let (ws, wi) = tree_argmax(rs, ri, rb, lane, bs, bi, lanes);
        let mut fs = ws;
        let mut fi = wi;
        if wi == NONE {
            fs = 0.0;
            fi = 0;
        }
        if lane == 0 {
            chosen[ty * k + j] = fi;
        }
        prev_s = fs;
        prev_i = fi;
    }
}
