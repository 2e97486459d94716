//! SimBal's element-wise pass on the Gram matrix, column normalisation for ScaleFree, its
//! backward projection, and the orthogonality error. The two GEMMs around them (`G = R^T R`,
//! `dR = R M`) are [`super::gemm`].
//!
//! Sums are per-cube partials reduced in a fixed order (deterministic).

use cubecl::prelude::*;

use super::util::{fill_zero, fits_u32, reduce_all, tree_max, tree_sum, Whole};
use simbal_core::simbal::kernels::{NormalizeColumns, ScaleFreeProject};
use simbal_core::WeightLayout;

use super::{check_len, check_len2, linear_cube, DevBuf, KernelError, Launch};
use crate::CubeclBackend;

/// Elements of the Gram matrix per cube of the element-wise passes.
const BLOCK: usize = 4096;

/// SimBal norm, as a kernel constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `lambda sum |G|`, `M = 2 lambda sign(G)`.
    L1,
    /// `lambda sum G^2`, `M = 4 lambda G`.
    FrobeniusSq,
    /// `lambda mean G^2` on normalised columns, `M = 4 lambda G / E^2`.
    ScaleFree,
}

#[cube]
fn sign0(g: f32) -> f32 {
    let mut s = 0.0f32;
    if g > 0.0 {
        s = 1.0;
    }
    if g < 0.0 {
        s = -1.0;
    }
    s
}

/// Element `i` of `G = gram - I` (`E x E`).
#[cube]
fn residual_at(gram: &Array<f32>, i: usize, e: usize) -> f32 {
    let mut g = gram[i];
    if i / e == i % e {
        g -= 1.0;
    }
    g
}

/// One cube per [`BLOCK`] elements of `G = gram - I`: per-cube partials `psum` of `sum |G|` or
/// `sum G^2`, in place `gram` to the multiplier `M` (`mul` times `sign(G)` or `G`); with `ortho`,
/// `psum` of `sum G^2` and `pmax` of `max |G|` instead, `gram` untouched.
#[cube(launch_unchecked)]
fn gram_kernel(
    gram: &mut Array<f32>,
    psum: &mut Array<f32>,
    pmax: &mut Array<f32>,
    e: u32,
    mul: f32,
    #[comptime] pass: GramPass,
) {
    let cube = linear_cube();
    let lane = UNIT_POS as usize;
    let e = e as usize;
    let len = e * e;
    let mut s = SharedMemory::<f32>::new(256usize);
    let start = cube * BLOCK;
    let mut acc = 0.0f32;
    let mut mx = 0.0f32;
    let mut i = start + lane;
    while i < start + BLOCK && i < len {
        let g = residual_at(gram, i, e);
        match pass {
            GramPass::Ortho => {
                acc += g * g;
                let a = f32::abs(g);
                if a > mx {
                    mx = a;
                }
            }
            GramPass::L1 => {
                acc += f32::abs(g);
                gram[i] = mul * sign0(g);
            }
            GramPass::Squares => {
                acc += g * g;
                gram[i] = mul * g;
            }
        }
        i += 256usize;
    }
    let total = tree_sum(&mut s, 0usize, lane, acc, 256usize);
    if comptime!(pass == GramPass::Ortho) {
        let top = tree_max(&mut s, 0usize, lane, mx, 256usize);
        if lane == 0 {
            pmax[cube] = top;
        }
    }
    if lane == 0 {
        psum[cube] = total;
    }
}

/// What [`gram_kernel`] does with each element of `G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GramPass {
    /// [`Norm::L1`]'s residual.
    L1,
    /// The residual of the squared norms ([`Norm::FrobeniusSq`], [`Norm::ScaleFree`]).
    Squares,
    /// The orthogonality error: `sum G^2` and `max |G|`, `gram` read only.
    Ortho,
}

/// Enqueues [`gram_kernel`] over the `E x E` Gram matrix (checked here), then
/// `out[at] = factor * sum psum` and, for [`GramPass::Ortho`], `out[at + 1] = max pmax`.
#[allow(clippy::too_many_arguments)]
fn gram_pass<R: Runtime>(
    client: &ComputeClient<R>,
    pass: GramPass,
    e: usize,
    gram: &DevBuf<f32>,
    mul: f32,
    out: &DevBuf<f32>,
    at: usize,
    factor: f32,
) -> Result<(), KernelError> {
    check_len2("Gram matrix", e, e, gram.len)?;
    fits_u32("Gram matrix", e * e)?;
    let cubes = (e * e).div_ceil(BLOCK).max(1);
    let launch = Launch::cubes(cubes)?;
    let psum = DevBuf::<f32>::empty(client, cubes);
    // Only the orthogonality error writes maxima; the residual gets a placeholder.
    let ortho = pass == GramPass::Ortho;
    let pmax = DevBuf::<f32>::empty(client, if ortho { cubes } else { 1 });
    launch!(
        client,
        launch,
        gram_kernel(gram.arg(), psum.arg(), pmax.arg(), e as u32, mul, pass)
    );
    if ortho {
        reduce_all(client, Whole::Max(&pmax), out, at + 1)?;
    }
    reduce_all(client, Whole::Sum(&psum, factor), out, at)
}

/// Enqueues SimBal's element-wise pass on the `E x E` Gram matrix (in place, to the multiplier
/// `M` with `dL/dR = R M`) and writes the loss value to `loss[at]`.
pub fn simbal_residual<R: Runtime>(
    client: &ComputeClient<R>,
    norm: Norm,
    lambda: f32,
    e: usize,
    gram: &DevBuf<f32>,
    loss: &DevBuf<f32>,
    at: usize,
) -> Result<(), KernelError> {
    let ee = (e * e) as f32;
    let (pass, mul, factor) = match norm {
        Norm::L1 => (GramPass::L1, 2.0 * lambda, lambda),
        Norm::FrobeniusSq => (GramPass::Squares, 4.0 * lambda, lambda),
        Norm::ScaleFree => (GramPass::Squares, 4.0 * lambda / ee, lambda / ee),
    };
    gram_pass(client, pass, e, gram, mul, loss, at, factor)
}

/// Enqueues the orthogonality error of a Gram matrix `R^T R` (`E x E`): `out[0] = mean G^2`,
/// `out[1] = max |G|`, `G = R^T R - I`.
pub fn ortho_error<R: Runtime>(
    client: &ComputeClient<R>,
    e: usize,
    gram: &DevBuf<f32>,
    out: &DevBuf<f32>,
) -> Result<(), KernelError> {
    check_len2("Gram matrix", e, e, gram.len)?;
    check_len("orthogonality error", 2, out.len)?;
    if e == 0 {
        return fill_zero(client, out);
    }
    gram_pass(
        client,
        GramPass::Ortho,
        e,
        gram,
        1.0,
        out,
        0,
        1.0 / (e * e) as f32,
    )
}

/// `sum_i a[at] b[at]` down column `c` (`at = i rs + c cs`, `i < d`), over the cube's 256 lanes.
#[cube]
fn column_dot(a: &Array<f32>, b: &Array<f32>, c: usize, d: u32, rs: u32, cs: u32) -> f32 {
    let lane = UNIT_POS as usize;
    let mut s = SharedMemory::<f32>::new(256usize);
    let mut acc = 0.0f32;
    let mut i = lane;
    while i < d as usize {
        let at = i * rs as usize + c * cs as usize;
        acc += a[at] * b[at];
        i += 256usize;
    }
    tree_sum(&mut s, 0usize, lane, acc, 256usize)
}

/// `1 / nrm`, 0 for a zero column.
#[cube]
fn inv_norm(nrm: f32) -> f32 {
    let mut inv = 0.0f32;
    if nrm > 0.0 {
        inv = 1.0 / nrm;
    }
    inv
}

/// Where the columns of a `d x e` weight lie: element `(i, c)` at `i rs + c cs`.
#[derive(CubeLaunch, CubeType)]
struct ColumnGeometry {
    d: u32,
    e: u32,
    rs: u32,
    cs: u32,
}

/// One cube per column of `geo`. Without `project`: column norms `norms = |w|` and unit columns
/// `out = w / |w|` of the weight `w`; with it, for `w` the normalised weight,
/// `out += (g - w <w, g>) / norms` (0 for a zero column).
#[cube(launch_unchecked)]
fn column_kernel(
    w: &Array<f32>,
    g: &Array<f32>,
    norms: &mut Array<f32>,
    out: &mut Array<f32>,
    geo: &ColumnGeometry,
    #[comptime] project: bool,
) {
    let (d, e, rs, cs) = (geo.d, geo.e, geo.rs, geo.cs);
    let c = linear_cube();
    let lane = UNIT_POS as usize;
    if c < e as usize {
        let mut dot = 0.0f32;
        let nrm = if project {
            dot = column_dot(w, g, c, d, rs, cs);
            norms[c]
        } else {
            let nrm = f32::sqrt(column_dot(w, w, c, d, rs, cs));
            if lane == 0 {
                norms[c] = nrm;
            }
            nrm
        };
        let inv = inv_norm(nrm);
        let mut i = lane;
        while i < d as usize {
            let at = i * rs as usize + c * cs as usize;
            if project {
                out[at] = out[at] + (g[at] - w[at] * dot) * inv;
            } else {
                out[at] = w[at] * inv;
            }
            i += 256usize;
        }
    }
}

/// The `D x E` weight a column pass walks, and the strides of `(d, e)` of its storage.
struct Columns {
    d: usize,
    e: usize,
    rs: u32,
    cs: u32,
}

impl Columns {
    /// Checks the `E` column norms and the `D x E` buffers `(name, buffer)` of a pass.
    fn new(
        layout: WeightLayout,
        d: usize,
        e: usize,
        norms: &DevBuf<f32>,
        mats: &[(&'static str, &DevBuf<f32>)],
    ) -> Result<Self, KernelError> {
        for (what, m) in mats {
            check_len2(what, d, e, m.len)?;
        }
        check_len("column norms", e, norms.len)?;
        fits_u32("router weight", d.saturating_mul(e))?;
        let (rs, cs) = match layout {
            WeightLayout::DxE => (e as u32, 1),
            WeightLayout::ExD => (1, d as u32),
        };
        Ok(Self { d, e, rs, cs })
    }

    /// Enqueues [`column_kernel`], one cube per column (none without columns).
    fn launch<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        [w, g, norms, out]: [&DevBuf<f32>; 4],
        project: bool,
    ) -> Result<(), KernelError> {
        if self.e == 0 {
            return Ok(());
        }
        let geo = ColumnGeometryLaunch::new(self.d as u32, self.e as u32, self.rs, self.cs);
        launch!(
            client,
            Launch::cubes(self.e)?,
            column_kernel(w.arg(), g.arg(), norms.arg(), out.arg(), geo, project)
        );
        Ok(())
    }
}

/// Enqueues column norms (`E`) and the column-normalised weight `rn` (same layout as `r`).
pub fn normalize_columns<R: Runtime>(
    client: &ComputeClient<R>,
    a: &NormalizeColumns<'_, CubeclBackend<R>>,
) -> Result<(), KernelError> {
    let mats = [("router weight", a.r), ("normalised weight", &*a.rn)];
    let cols = Columns::new(a.layout, a.d, a.e, a.norms, &mats)?;
    // `g` is not read without `project`: `r` stands in.
    cols.launch(client, [a.r, a.r, a.norms, a.rn], false)
}

/// Enqueues `grad += (g - rn <rn, g>) / |r|` per column (the gradient through normalisation).
pub fn scale_free_project<R: Runtime>(
    client: &ComputeClient<R>,
    a: &ScaleFreeProject<'_, CubeclBackend<R>>,
) -> Result<(), KernelError> {
    let mats = [
        ("normalised weight", a.rn),
        ("normalised gradient", a.g),
        ("router gradient", &*a.grad),
    ];
    let cols = Columns::new(a.layout, a.d, a.e, a.norms, &mats)?;
    cols.launch(client, [a.rn, a.g, a.norms, a.grad], true)
}
