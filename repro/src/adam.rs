//! Parameters with their gradients and Adam state, and the Adam optimiser (Kingma & Ba, 2015).

use simbal_core::Scalar;

/// A trainable tensor: values, accumulated gradient and Adam moments, all the same length.
#[derive(Debug, Clone)]
pub struct Param<T> {
    /// Values.
    pub w: Vec<T>,
    /// Gradient accumulated since the last [`Param::zero_grad`].
    pub g: Vec<T>,
    m: Vec<T>,
    v: Vec<T>,
}

impl<T: Scalar> Param<T> {
    /// A parameter holding `w`, with zero gradient and moments.
    pub fn new(w: Vec<T>) -> Self {
        let n = w.len();
        Self {
            w,
            g: vec![T::zero(); n],
            m: vec![T::zero(); n],
            v: vec![T::zero(); n],
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.w.len()
    }

    /// Whether the parameter holds no values.
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// Sets the gradient to zero.
    pub fn zero_grad(&mut self) {
        self.g.iter_mut().for_each(|g| *g = T::zero());
    }
}

/// Adam with bias correction and no weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator floor.
    pub eps: f64,
    t: u64,
}

impl Adam {
    /// Adam with learning rate `lr` and the usual `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
        }
    }

    /// Starts a step: call once per step, before [`Adam::update`] on every parameter.
    pub fn begin_step(&mut self) {
        self.t += 1;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Applies one Adam update to `p` from its gradient (the gradient is left as it is).
    pub fn update<T: Scalar>(&self, p: &mut Param<T>) {
        let t = self.t.max(1) as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        let step = T::of(self.lr * c2.sqrt() / c1);
        let (b1, b2) = (T::of(self.beta1), T::of(self.beta2));
        let (ob1, ob2) = (T::of(1.0 - self.beta1), T::of(1.0 - self.beta2));
        let eps = T::of(self.eps * c2.sqrt());
        for (((w, &g), m), v) in p.w.iter_mut().zip(&p.g).zip(&mut p.m).zip(&mut p.v) {
            *m = b1 * *m + ob1 * g;
            *v = b2 * *v + ob2 * g * g;
            *w = *w - step * *m / (v.sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        let mut p = Param::new(vec![1.0f64, -2.0, 0.5]);
        p.g = vec![3.0, -0.01, 0.0];
        let mut adam = Adam::new(0.1);
        adam.begin_step();
        adam.update(&mut p);
        // Bias-corrected first step: m/sqrt(v) = sign(g) (up to eps), zero gradient stays put.
        assert!((p.w[0] - 0.9).abs() < 1e-6, "{}", p.w[0]);
        assert!((p.w[1] - (-1.9)).abs() < 1e-5, "{}", p.w[1]);
        assert_eq!(p.w[2], 0.5);
    }

    #[test]
    fn minimises_a_quadratic() {
        let mut p = Param::new(vec![5.0f64, -3.0]);
        let mut adam = Adam::new(0.05);
        for _ in 0..2000 {
            adam.begin_step();
            let (a, b) = (p.w[0], p.w[1]);
            p.g = vec![2.0 * (a - 1.0), 2.0 * (b + 2.0)];
            adam.update(&mut p);
        }
        assert!(
            (p.w[0] - 1.0).abs() < 1e-2 && (p.w[1] + 2.0).abs() < 1e-2,
            "{:?}",
            p.w
        );
    }
}
