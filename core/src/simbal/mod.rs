//! SimBal, the similarity-preserving router loss (arXiv 2506.14038) `lambda ||R^T R - I||_1`,
//! and its variants: the reference math ([`mod@reference`]), the kernel family ([`kernels`]) and,
//! here, [`simbal_loss`], composed from two GEMMs around the element-wise pass.

pub mod kernels;
pub mod reference;

use crate::backend::Backend;
use crate::config::{SimBalConfig, SimBalNorm, WeightLayout};
use crate::error::{Result, SimbalError};
use crate::gemm::{Gemm, GemmArgs};
use crate::memory::{view, view_mut};
use crate::shape::check_len;
use kernels::{NormalizeColumns, ScaleFreeProject, SimbalResidual};

/// SimBal's buffers for one router weight shape: the Gram matrix and, for ScaleFree, the
/// normalised weight. The weight's shape is stated here once.
pub struct SimbalWorkspace<B: Backend> {
    layout: WeightLayout,
    d: usize,
    e: usize,
    gram: B::Buf,
    norms: B::Buf,
    rn: B::Buf,
    drn: B::Buf,
}

impl<B: Backend> SimbalWorkspace<B> {
    /// Buffers for a router weight of `d x e` (stored in `layout`).
    ///
    /// # Errors
    /// [`SimbalError::ZeroDim`] for `d = 0` or `e = 0`; allocation failures.
    pub fn new(backend: &B, layout: WeightLayout, d: usize, e: usize) -> Result<Self> {
        crate::shape::check_dims(1, d, e)?;
        let de = crate::shape::product("router weight", d, e)?;
        Ok(Self {
            layout,
            d,
            e,
            gram: backend.zeros(crate::shape::product("Gram matrix", e, e)?)?,
            norms: backend.zeros(e)?,
            rn: backend.zeros(de)?,
            drn: backend.zeros(de)?,
        })
    }

    /// Whether these buffers serve a weight of `layout` and shape `d x e`.
    pub fn fits(&self, layout: WeightLayout, d: usize, e: usize) -> bool {
        (self.layout, self.d, self.e) == (layout, d.max(1), e)
    }

    /// The weight's layout, width `D` and experts `E`.
    pub fn shape(&self) -> (WeightLayout, usize, usize) {
        (self.layout, self.d, self.e)
    }

    /// The Gram matrix's buffer: after a SimBal call it holds the multiplier `M`
    /// (`dL/dR = R M`).
    pub fn multiplier(&self) -> &B::View {
        view::<B>(&self.gram)
    }
}

/// SimBal on the router weight `r`, of the shape `ws` was made for: returns the loss value and,
/// when `grad` is given, adds `dL/dR` into it (same layout as `r`).
///
/// ```
/// use simbal_core::{simbal_loss, Reference, SimBalConfig, SimbalWorkspace, WeightLayout};
/// let be = Reference::<f64>::new();
/// let r = [1.0, 0.0, 0.0, 2.0]; // 2 x 2, columns of length 1 and 2
/// let mut grad = [0.0; 4];
/// let mut ws = SimbalWorkspace::new(&be, WeightLayout::DxE, 2, 2)?;
/// let l = simbal_loss(&be, &SimBalConfig::default(), &r, Some(&mut grad), &mut ws)?;
/// assert!((l - 0.1 * 3.0).abs() < 1e-12); // |1-1| + |4-1| = 3
/// assert_eq!(grad, [0.0, 0.0, 0.0, 0.4]); // 2 * 0.1 * R sign(G)
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
///
/// # Errors
/// [`SimbalError::InvalidCoefficient`] for a negative or non-finite `lambda`;
/// [`SimbalError::LengthMismatch`] unless `r` and `grad` hold `D x E`; [`SimbalError::Overflow`]
/// when the value overflows the element type; backend failures.
pub fn simbal_loss<B: Backend>(
    b: &B,
    cfg: &SimBalConfig,
    r: &B::View,
    grad: Option<&mut B::View>,
    ws: &mut SimbalWorkspace<B>,
) -> Result<B::Elem> {
    let loss = b.read_value(&simbal_loss_value(b, cfg, r, grad, ws)?)?;
    if !num_traits::Float::is_finite(loss) {
        return Err(SimbalError::Overflow {
            what: "SimBal value",
        });
    }
    Ok(loss)
}

/// [`simbal_loss`] with the value left on the backend's side (the router reads it with the
/// step's other values); the caller checks that it is finite.
pub(crate) fn simbal_loss_value<B: Backend>(
    b: &B,
    cfg: &SimBalConfig,
    r: &B::View,
    grad: Option<&mut B::View>,
    ws: &mut SimbalWorkspace<B>,
) -> Result<B::Value> {
    crate::config::check_coefficient("SimBal lambda", cfg.lambda)?;
    let (layout, d, e) = (ws.layout, ws.d, ws.e);
    let de = crate::shape::product("router weight", d, e)?;
    check_len("router weight", de, b.len(r))?;
    if let Some(g) = grad.as_deref() {
        check_len("router gradient", de, b.len(g))?;
    }
    let scale_free = cfg.norm == SimBalNorm::ScaleFree;
    if scale_free {
        b.normalize_columns(
            NormalizeColumns {
                layout,
                d,
                e,
                r,
                norms: view_mut::<B>(&mut ws.norms),
                rn: view_mut::<B>(&mut ws.rn),
            }
            .check(b)?,
        )?;
    }
    let w = if scale_free { view::<B>(&ws.rn) } else { r };
    let gram = match layout {
        WeightLayout::DxE => Gemm::new(e, e, d).ta(),
        WeightLayout::ExD => Gemm::new(e, e, d).tb(),
    };
    b.gemm(
        GemmArgs {
            gemm: gram,
            a: w,
            b: w,
            c: view_mut::<B>(&mut ws.gram),
        }
        .check(b)?,
    )?;
    let loss = b.simbal_residual(
        SimbalResidual {
            cfg,
            e,
            gram: view_mut::<B>(&mut ws.gram),
        }
        .check(b)?,
    )?;
    if let Some(grad) = grad {
        // dL/dW = W M (D x E) or M W (E x D); M is symmetric.
        let prod = match layout {
            WeightLayout::DxE => Gemm::new(d, e, e),
            WeightLayout::ExD => Gemm::new(e, d, e),
        };
        let m = view::<B>(&ws.gram);
        let w = if scale_free { view::<B>(&ws.rn) } else { r };
        let (a, bb) = match layout {
            WeightLayout::DxE => (w, m),
            WeightLayout::ExD => (m, w),
        };
        if scale_free {
            b.gemm(
                GemmArgs {
                    gemm: prod,
                    a,
                    b: bb,
                    c: view_mut::<B>(&mut ws.drn),
                }
                .check(b)?,
            )?;
            b.scale_free_project(
                ScaleFreeProject {
                    layout,
                    d,
                    e,
                    rn: view::<B>(&ws.rn),
                    norms: view::<B>(&ws.norms),
                    g: view::<B>(&ws.drn),
                    grad,
                }
                .check(b)?,
            )?;
        } else {
            b.gemm(
                GemmArgs {
                    gemm: prod.beta(1.0),
                    a,
                    b: bb,
                    c: grad,
                }
                .check(b)?,
            )?;
        }
    }
    Ok(loss)
}
