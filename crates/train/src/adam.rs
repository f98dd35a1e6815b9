//! Adam with Keras' defaults and Keras' update rule (epsilon added to `sqrt(v)`, the bias
//! correction folded into the step size), which differs slightly from candle-nn's `AdamW`.

use candle_core::{backprop::GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
}

impl Default for AdamConfig {
    /// Keras: `Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07)`.
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }
}

/// The optimizer and its state: first and second moments per variable, and the step count.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    iterations: u64,
}

impl Adam {
    pub fn new(vars: Vec<Var>, config: AdamConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            config,
            vars,
            m,
            v,
            iterations: 0,
        })
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The moments `(m, v)` in the order of the variables.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Restores the state saved from an optimizer over the same variables.
    pub fn set_state(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, iterations: u64) -> Result<()> {
        if m.len() != self.vars.len() || v.len() != self.vars.len() {
            return Err(crate::TrainError::Config(format!(
                "optimizer state for {} variables, the model has {}",
                m.len(),
                self.vars.len()
            )));
        }
        for ((var, m), v) in self.vars.iter().zip(&m).zip(&v) {
            if m.dims() != var.dims() || v.dims() != var.dims() {
                return Err(crate::TrainError::Config(format!(
                    "optimizer state shape {:?} does not match variable {:?}",
                    m.dims(),
                    var.dims()
                )));
            }
        }
        self.m = m;
        self.v = v;
        self.iterations = iterations;
        Ok(())
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.iterations += 1;
        let AdamConfig {
            learning_rate: lr,
            beta_1: b1,
            beta_2: b2,
            epsilon: eps,
        } = self.config;
        let t = self.iterations as i32;
        let lr_t = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for ((var, m), v) in self
            .vars
            .iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let Some(g) = grads.get(var) else { continue };
            // Detached: a gradient can carry the op graph of its step, and the moments would
            // then keep every step's activations alive.
            let g = g.detach();
            *m = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?.detach();
            *v = (v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?.detach();
            let update = (m.affine(lr_t, 0.0)? / (v.sqrt()? + eps)?)?;
            var.set(&var.sub(&update)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Keras' rule worked by hand for a scalar: after one step with gradient g, the update is
    /// lr * sqrt(1-b2)/(1-b1) * (1-b1) g / (sqrt((1-b2) g^2) + eps) ≈ lr * sign(g).
    #[test]
    fn first_steps_follow_keras_formula() {
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![x.clone()], AdamConfig::default()).unwrap();
        // loss = sum(x^2): gradient 2x.
        let (mut m, mut v, mut p) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for t in 1..=3 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
            let lr_t = 1e-3 * (1.0 - 0.999f64.powi(t)).sqrt() / (1.0 - 0.9f64.powi(t));
            for i in 0..2 {
                let g = 2.0 * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                p[i] -= lr_t * m[i] / (v[i].sqrt() + 1e-7);
            }
        }
        let got: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert_eq!(adam.iterations(), 3);
    }
}
