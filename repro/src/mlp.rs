//! An expert: a two-layer MLP `y = relu(x W1 + b1) W2 + b2` with its hand-written backward.

use crate::adam::Param;
use crate::linalg::{add_rows, gemm_nn, gemm_nt, gemm_tn};
use simbal_core::shape::check_len;
use simbal_core::{Result, Rng, Scalar, SimbalError};

/// A two-layer ReLU MLP, `d_in -> hidden -> d_out`; weights row-major (`W1` is `d_in x hidden`).
#[derive(Debug, Clone)]
pub struct Mlp<T> {
    d_in: usize,
    hidden: usize,
    d_out: usize,
    /// First layer weight, `d_in x hidden`.
    pub w1: Param<T>,
    /// First layer bias, `hidden`.
    pub b1: Param<T>,
    /// Second layer weight, `hidden x d_out`.
    pub w2: Param<T>,
    /// Second layer bias, `d_out`.
    pub b2: Param<T>,
}

/// What the backward pass needs from the forward pass, plus scratch; reused across calls.
#[derive(Debug, Clone, Default)]
pub struct MlpCache<T> {
    rows: usize,
    x: Vec<T>,
    h: Vec<T>,
    dh: Vec<T>,
}

impl<T: Scalar> MlpCache<T> {
    /// Rows of the last forward pass.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl<T: Scalar> Mlp<T> {
    /// He-initialised weights (`W1 ~ N(0, 2/d_in)`, `W2 ~ N(0, 1/hidden)`), zero biases.
    pub fn new(d_in: usize, hidden: usize, d_out: usize, rng: &mut Rng) -> Result<Self> {
        for (what, v) in [("D", d_in), ("N", hidden), ("E", d_out)] {
            if v == 0 {
                return Err(SimbalError::ZeroDim { what });
            }
        }
        let mut w1 = vec![T::zero(); d_in * hidden];
        rng.fill_normal((2.0 / d_in as f64).sqrt(), &mut w1);
        let mut w2 = vec![T::zero(); hidden * d_out];
        rng.fill_normal((1.0 / hidden as f64).sqrt(), &mut w2);
        Ok(Self {
            d_in,
            hidden,
            d_out,
            w1: Param::new(w1),
            b1: Param::new(vec![T::zero(); hidden]),
            w2: Param::new(w2),
            b2: Param::new(vec![T::zero(); d_out]),
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }
    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The four parameters, for the optimiser.
    pub fn params_mut(&mut self) -> [&mut Param<T>; 4] {
        [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2]
    }

    /// Forward pass on `rows` inputs `x` (`rows x d_in`) into `out` (`rows x d_out`); keeps what
    /// the backward pass needs in `cache`.
    pub fn forward(
        &self,
        rows: usize,
        x: &[T],
        cache: &mut MlpCache<T>,
        out: &mut [T],
    ) -> Result<()> {
        check_len("expert input", rows * self.d_in, x.len())?;
        check_len("expert output", rows * self.d_out, out.len())?;
        cache.rows = rows;
        cache.x.clear();
        cache.x.extend_from_slice(x);
        cache.h.resize(rows * self.hidden, T::zero());
        for row in cache.h.chunks_exact_mut(self.hidden) {
            row.copy_from_slice(&self.b1.w);
        }
        gemm_nn(self.hidden, self.d_in, x, &self.w1.w, &mut cache.h, true);
        for v in cache.h.iter_mut() {
            if *v < T::zero() {
                *v = T::zero();
            }
        }
        for row in out.chunks_exact_mut(self.d_out) {
            row.copy_from_slice(&self.b2.w);
        }
        gemm_nn(self.d_out, self.hidden, &cache.h, &self.w2.w, out, true);
        Ok(())
    }

    /// Backward pass of the last forward pass in `cache` for the output gradient `dy`
    /// (`rows x d_out`): adds the parameter gradients and, when asked, writes the input gradient
    /// into `dx` (`rows x d_in`).
    pub fn backward(
        &mut self,
        cache: &mut MlpCache<T>,
        dy: &[T],
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        let rows = cache.rows;
        check_len("expert output gradient", rows * self.d_out, dy.len())?;
        if let Some(dx) = dx.as_deref() {
            check_len("expert input gradient", rows * self.d_in, dx.len())?;
        }
        let (din, hid, dout) = (self.d_in, self.hidden, self.d_out);
        // dW2 += H^T dY, db2 += sum dY
        gemm_tn(hid, dout, &cache.h, dy, &mut self.w2.g, true);
        add_rows(&mut self.b2.g, dy);
        // dH = dY W2^T, masked by relu'(A) (h > 0)
        cache.dh.resize(rows * hid, T::zero());
        gemm_nt(hid, dout, dy, &self.w2.w, &mut cache.dh, false);
        for (d, &h) in cache.dh.iter_mut().zip(&cache.h) {
            if h <= T::zero() {
                *d = T::zero();
            }
        }
        gemm_tn(din, hid, &cache.x, &cache.dh, &mut self.w1.g, true);
        add_rows(&mut self.b1.g, &cache.dh);
        if let Some(dx) = dx {
            gemm_nt(din, hid, &cache.dh, &self.w1.w, dx, false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss `sum_i c_i y_i` for fixed random `c`: its gradient w.r.t. `y` is `c`.
    fn loss(m: &Mlp<f64>, rows: usize, x: &[f64], c: &[f64]) -> f64 {
        let mut out = vec![0.0; rows * m.d_out()];
        let mut cache = MlpCache::default();
        m.forward(rows, x, &mut cache, &mut out).unwrap();
        out.iter().zip(c).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn backward_matches_central_differences() {
        let mut rng = Rng::new(3);
        let (rows, din, hid, dout) = (5, 4, 6, 3);
        let mut m = Mlp::<f64>::new(din, hid, dout, &mut rng).unwrap();
        rng.fill_normal(0.3, &mut m.b1.w);
        rng.fill_normal(0.3, &mut m.b2.w);
        let mut x = vec![0.0; rows * din];
        rng.fill_normal(1.0, &mut x);
        let mut c = vec![0.0; rows * dout];
        rng.fill_normal(1.0, &mut c);
        let mut out = vec![0.0; rows * dout];
        let mut cache = MlpCache::default();
        m.forward(rows, &x, &mut cache, &mut out).unwrap();
        let mut dx = vec![0.0; rows * din];
        m.backward(&mut cache, &c, Some(&mut dx)).unwrap();
        let h = 1e-6;
        let check = |analytic: f64, plus: f64, minus: f64| {
            let fd = (plus - minus) / (2.0 * h);
            assert!(
                (analytic - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
                "{analytic} vs {fd}"
            );
        };
        for i in 0..x.len() {
            let mut xp = x.clone();
            xp[i] += h;
            let mut xm = x.clone();
            xm[i] -= h;
            check(dx[i], loss(&m, rows, &xp, &c), loss(&m, rows, &xm, &c));
        }
        for which in 0..4 {
            let len = m.params_mut()[which].len();
            for i in 0..len {
                let analytic = m.params_mut()[which].g[i];
                let mut mp = m.clone();
                mp.params_mut()[which].w[i] += h;
                let mut mm = m.clone();
                mm.params_mut()[which].w[i] -= h;
                check(analytic, loss(&mp, rows, &x, &c), loss(&mm, rows, &x, &c));
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let mut rng = Rng::new(1);
        let m = Mlp::<f32>::new(3, 4, 2, &mut rng).unwrap();
        let mut cache = MlpCache::default();
        let mut out = vec![0.0; 4];
        assert!(m.forward(2, &[0.0; 5], &mut cache, &mut out).is_err());
        assert!(Mlp::<f32>::new(0, 4, 2, &mut rng).is_err());
    }
}
