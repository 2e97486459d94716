//! The score functions of a staged forward row: softmax (max-subtracted) or sigmoid of the
//! logits in shared memory, in place.

use cubecl::prelude::*;

use super::util::{tree_max, tree_sum};

/// Logistic sigmoid without overflow for either sign (as the reference).
#[cube]
pub fn sigmoid(v: f32) -> f32 {
    let en = f32::exp(-v);
    let ep = f32::exp(v);
    select(v >= 0.0, 1.0 / (1.0 + en), ep / (1.0 + ep))
}

/// `ninf` is `-inf`, passed at run time (WGSL has no infinite literal).
/// Writes the scores of one row into `ps[pb..pb + E]` (which holds the logits on entry), every
/// lane its strided share. All threads of the cube must call it.
#[cube]
pub fn score_row_shared(
    ps: &mut SharedMemory<f32>,
    rs: &mut SharedMemory<f32>,
    pb: usize,
    rb: usize,
    lane: usize,
    ninf: f32,
    #[comptime] e: usize,
    #[comptime] lanes: usize,
    #[comptime] softmax: bool,
) {
    if softmax {
        let mut mx = ninf;
        let mut c = lane;
        while c < e {
            let v = ps[pb + c];
            if v > mx {
                mx = v;
            }
            c += lanes;
        }
        mx = tree_max(rs, rb, lane, mx, lanes);
        let mut sum = 0.0f32;
        c = lane;
        while c < e {
            let v = f32::exp(ps[pb + c] - mx);
            ps[pb + c] = v;
            sum += v;
            c += lanes;
        }
        sum = tree_sum(rs, rb, lane, sum, lanes);
        let inv = 1.0 / sum;
        c = lane;
        while c < e {
            ps[pb + c] = ps[pb + c] * inv;
            c += lanes;
        }
    } else {
        let mut c = lane;
        while c < e {
            ps[pb + c] = sigmoid(ps[pb + c]);
            c += lanes;
        }
    }
}
