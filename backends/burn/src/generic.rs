//! The generic path: [`BurnTensors`], a simbal backend whose element buffers are tensors of any
//! burn backend. Its GEMMs run as burn matmuls on that backend; every other kernel is core's
//! staged default (read to the host, the reference rows, written back), and index buffers live
//! on the host. Correct on every burn backend, fast where the GEMMs dominate; the backends with
//! a native engine (`NdArray`, burn's cubecl backends) do not use it.
//!
//! A burn backend without its own [`crate::SimbalBackend`] implementation gets one from
//! [`crate::generic_simbal_backend!`].

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Element, Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use simbal_core::shape::check_len;
use simbal_core::{Checked, GemmArgs, Memory, Result, Scalar};

use crate::backend::checked_len;
use crate::convert::float_host;

/// A simbal backend on the tensors of burn backend `B` (see the module documentation).
///
/// ```
/// use simbal_burn::BurnTensors;
/// use simbal_core::{LossConfig, Router, RouterConfig, Memory};
/// type B = burn::backend::NdArray<f64>;
/// let engine = BurnTensors::<B>::new(&Default::default());
/// let (n, d, e) = (6, 4, 4);
/// let x = engine.upload(&(0..n * d).map(|i| (i % 7) as f64 / 7.0).collect::<Vec<_>>())?;
/// let r = engine.upload(&simbal_core::orthogonal_init(simbal_core::WeightLayout::DxE, d, e, 0)?)?;
/// let mut router = Router::new(engine.clone(), RouterConfig::new(e, 2))?;
/// let mut pass = router.forward(&x, &r, None)?;
/// let dw = engine.upload(&vec![1.0; n * 2])?;
/// let grads = pass.backward(&dw, &LossConfig::simbal(), None)?;
/// assert_eq!(engine.len(grads.dx), n * d);
/// # Ok::<(), simbal_core::SimbalError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BurnTensors<B: Backend> {
    device: B::Device,
}

impl<B: Backend> BurnTensors<B> {
    /// The backend on `device`.
    pub fn new(device: &B::Device) -> Self {
        Self {
            device: device.clone(),
        }
    }
}

/// A buffer of [`BurnTensors`]: a 1-D burn tensor. Kernels replace the tensor rather than
/// write into it, so a tensor handed out of a buffer never changes.
#[derive(Debug, Clone)]
pub struct BurnBuf<B: Backend> {
    t: FloatTensor<B>,
    len: usize,
}

impl<B: Backend> BurnBuf<B> {
    /// `t`'s elements (row-major) as a buffer, without a copy where the backend reshapes in place.
    pub fn of(t: &FloatTensor<B>) -> Self {
        let len = t.shape().num_elements();
        let flat = tensor::<B, 1>(t.clone()).reshape([len]);
        Self {
            t: flat.into_primitive().tensor(),
            len,
        }
    }

    /// The buffer's tensor.
    pub fn tensor(&self) -> &FloatTensor<B> {
        &self.t
    }
}

fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

impl<B: Backend> Memory for BurnTensors<B>
where
    B::FloatElem: Scalar,
{
    type Elem = B::FloatElem;
    type Buf = BurnBuf<B>;
    type View = BurnBuf<B>;

    fn name(&self) -> String {
        format!(
            "burn-{}-{:?}",
            B::name(&self.device),
            <B::FloatElem as Element>::dtype()
        )
    }

    fn zeros(&self, len: usize) -> Result<BurnBuf<B>> {
        // The element type's dtype, not the device's default: `NdArray<f32>` and `NdArray<f64>`
        // share one device, whose default float dtype is whichever backend set it first.
        let dtype = <B::FloatElem as Element>::dtype().into();
        Ok(BurnBuf {
            t: B::float_zeros(Shape::new([len]), &self.device, dtype),
            len,
        })
    }

    fn upload(&self, host: &[B::FloatElem]) -> Result<BurnBuf<B>> {
        let data = TensorData::new(host.to_vec(), [host.len()]);
        Ok(BurnBuf {
            t: B::float_from_data(data, &self.device),
            len: host.len(),
        })
    }

    fn download(&self, buf: &BurnBuf<B>, host: &mut [B::FloatElem]) -> Result<()> {
        check_len("download target", buf.len, host.len())?;
        host.copy_from_slice(&float_host::<B, B::FloatElem>(buf.t.clone())?);
        Ok(())
    }

    fn write(&self, buf: &mut BurnBuf<B>, host: &[B::FloatElem]) -> Result<()> {
        check_len("write source", buf.len, host.len())?;
        *buf = self.upload(host)?;
        Ok(())
    }

    fn len(&self, buf: &BurnBuf<B>) -> usize {
        buf.len
    }

    simbal_core::host_idx_memory!();
    // The kernels read their scalar results through burn (its own synchronisation per value).
    simbal_core::host_values!(B::FloatElem);
}

impl<B: Backend> simbal_core::Backend for BurnTensors<B>
where
    B::FloatElem: Scalar,
{
    /// `C = alpha op(A) op(B) + beta C` as one burn matmul on `B` (plus a scale and an add
    /// when `alpha != 1` or `beta != 0`).
    fn gemm(&self, a: Checked<GemmArgs<'_, Self>>) -> Result<()> {
        let GemmArgs { gemm: g, a, b, c } = a.into_inner();
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let old = tensor::<B, 1>(c.t.clone()).reshape([g.m, g.n]);
        let mut out = if g.k == 0 {
            old.clone().zeros_like()
        } else {
            let op = |t: &BurnBuf<B>, rows: usize, cols: usize, trans: bool| {
                let t = tensor::<B, 1>(t.t.clone());
                if trans {
                    t.reshape([cols, rows]).transpose()
                } else {
                    t.reshape([rows, cols])
                }
            };
            op(a, g.m, g.k, g.trans_a).matmul(op(b, g.k, g.n, g.trans_b))
        };
        if g.alpha != 1.0 {
            out = out.mul_scalar(g.alpha);
        }
        if g.beta != 0.0 {
            out = out.add(old.mul_scalar(g.beta));
        }
        c.t = out.reshape([g.m * g.n]).into_primitive().tensor();
        Ok(())
    }
}

/// [`crate::SimbalBackend::float_out`] of the generic path: the buffer's tensor reshaped (no
/// copy: buffers are replaced, never written into).
///
/// # Errors
/// [`simbal_core::SimbalError::LengthMismatch`] when `v` does not hold `shape`'s elements.
pub fn float_out<B: Backend>(v: &BurnBuf<B>, shape: &[usize]) -> Result<FloatTensor<B>> {
    checked_len(v.len, shape)?;
    let t = tensor::<B, 1>(v.t.clone());
    Ok(match *shape {
        [a] => t.reshape([a]).into_primitive().tensor(),
        [a, b] => t.reshape([a, b]).into_primitive().tensor(),
        _ => {
            return Err(simbal_core::SimbalError::Unsupported {
                what: "a simbal output of rank other than 1 or 2",
            })
        }
    })
}

/// Implements [`crate::SimbalBackend`] for a burn backend through the generic path
/// ([`BurnTensors`]): its GEMMs on the backend, the rest of simbal staged through the host.
/// For a backend whose float element is `f32` or `f64`.
///
/// ```ignore
/// simbal_burn::generic_simbal_backend!(my_crate::MyBackend);
/// ```
#[macro_export]
macro_rules! generic_simbal_backend {
    ($b:ty) => {
        impl $crate::SimbalBackend for $b {
            type Engine = $crate::BurnTensors<$b>;
            type Lent<'a> = $crate::BurnBuf<$b>;

            fn engine(
                device: &<$b as $crate::burn::tensor::backend::Backend>::Device,
            ) -> $crate::simbal_core::Result<Self::Engine> {
                Ok($crate::BurnTensors::new(device))
            }

            fn lend<'a>(
                _: &Self::Engine,
                t: &'a $crate::burn::tensor::ops::FloatTensor<$b>,
            ) -> $crate::simbal_core::Result<Self::Lent<'a>> {
                Ok($crate::BurnBuf::of(t))
            }

            fn float_out(
                _: &Self::Engine,
                v: &$crate::BurnBuf<$b>,
                shape: &[usize],
                _: &<$b as $crate::burn::tensor::backend::Backend>::Device,
            ) -> $crate::simbal_core::Result<$crate::burn::tensor::ops::FloatTensor<$b>> {
                $crate::generic::float_out(v, shape)
            }
        }
    };
}
