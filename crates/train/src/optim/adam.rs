//! Adam with Keras' defaults and Keras' update rule (epsilon added to `sqrt(v)`, the bias
//! correction folded into the step size), which differs slightly from candle-nn's `AdamW`.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{backprop::GradStore, Tensor};
use serde::{Deserialize, Serialize};

use super::{slot, Optimizer, OptimizerState, Param};
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

/// The optimizer and its state: first and second moments per weight, and the step count.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    params: Vec<Param>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    iterations: u64,
    frozen: BTreeSet<String>,
}

impl Adam {
    /// Adam over `params` (see [`super::trainable_params`]); `config.learning_rate` is what a
    /// constant schedule gives.
    pub fn new(params: Vec<Param>, config: AdamConfig) -> Result<Self> {
        let zeros = |p: &Param| p.var.zeros_like();
        let m = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Separate storage: the CPU path updates the moments in place.
        let v = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params,
            m,
            v,
            iterations: 0,
            frozen: BTreeSet::new(),
        })
    }

    /// The moments `(m, v)` in the order of the weights. On the CPU they are updated in
    /// place by each step: copy them to keep a snapshot.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// The weights' names, in the order of [`Adam::moments`].
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "Adam"
    }

    fn iterations(&self) -> u64 {
        self.iterations
    }

    fn slot_names(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut slots = BTreeMap::new();
        for ((p, m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            slots.insert(format!("{}/m", p.name), m.copy()?);
            slots.insert(format!("{}/v", p.name), v.copy()?);
        }
        Ok(OptimizerState {
            iterations: self.iterations,
            slots,
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let m = self
            .params
            .iter()
            .map(|p| slot(state, p, "m"))
            .collect::<Result<Vec<_>>>()?;
        let v = self
            .params
            .iter()
            .map(|p| slot(state, p, "v"))
            .collect::<Result<Vec<_>>>()?;
        (self.m, self.v, self.iterations) = (m, v, state.iterations);
        Ok(())
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.config).expect("plain numbers")
    }

    fn set_frozen(&mut self, frozen: &BTreeSet<String>) {
        self.frozen = frozen.clone();
    }

    /// Keras' rule at `lr`: the bias correction folded into the step size.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.iterations += 1;
        let AdamConfig {
            beta_1: b1,
            beta_2: b2,
            epsilon: eps,
            ..
        } = self.config;
        let t = self.iterations as i32;
        let lr_t = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for ((p, m), v) in self
            .params
            .iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let var = &p.var;
            if self.frozen.contains(&p.name) {
                continue;
            }
            let Some(g) = grads.get(var) else { continue };
            if in_place::applies(var, m, v, g) {
                in_place::step(var, m, v, g, (b1, b2, eps), lr_t)?;
                continue;
            }
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

/// The update for f32 tensors on the CPU as three passes over memory, in place, instead of a
/// dozen elementwise tensor ops that each allocate their result.
mod in_place {
    use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor, Var};

    /// `m` and `v` never share storage: `Adam::new` and `load_state` give each its own.
    pub fn applies(var: &Var, m: &Tensor, v: &Tensor, g: &Tensor) -> bool {
        [var.as_tensor(), m, v, g].iter().all(|t| {
            t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
        })
    }

    pub fn step(
        var: &Var,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        (b1, b2, eps): (f64, f64, f64),
        lr_t: f64,
    ) -> candle_core::Result<()> {
        m.inplace_op2(
            g,
            &Moment {
                decay: b1 as f32,
                square: false,
            },
        )?;
        v.inplace_op2(
            g,
            &Moment {
                decay: b2 as f32,
                square: true,
            },
        )?;
        var.as_tensor().inplace_op3(
            m,
            v,
            &Apply {
                lr_t: lr_t as f32,
                eps: eps as f32,
            },
        )
    }

    fn values<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
            _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
        }
    }

    fn values_mut<'a>(
        op: &str,
        s: &'a mut CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<&'a mut [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
            _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
        }
    }

    /// `m = decay·m + (1-decay)·g` (or `g²`).
    struct Moment {
        decay: f32,
        square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "simplecnn-adam-moment"
        }

        fn cpu_fwd(
            &self,
            ms: &mut CpuStorage,
            ml: &Layout,
            gs: &CpuStorage,
            gl: &Layout,
        ) -> candle_core::Result<()> {
            let g = values(self.name(), gs, gl)?;
            let m = values_mut(self.name(), ms, ml)?;
            if m.len() != g.len() {
                candle_core::bail!("{}: {} values, gradient {}", self.name(), m.len(), g.len());
            }
            let (d, rest) = (self.decay, 1.0 - self.decay);
            if self.square {
                m.iter_mut()
                    .zip(g)
                    .for_each(|(m, g)| *m = d * *m + rest * (g * g));
            } else {
                m.iter_mut()
                    .zip(g)
                    .for_each(|(m, g)| *m = d * *m + rest * g);
            }
            Ok(())
        }
    }

    /// `p -= lr_t·m / (sqrt(v) + eps)`.
    struct Apply {
        lr_t: f32,
        eps: f32,
    }

    impl InplaceOp3 for Apply {
        fn name(&self) -> &'static str {
            "simplecnn-adam-apply"
        }

        fn cpu_fwd(
            &self,
            ps: &mut CpuStorage,
            pl: &Layout,
            ms: &CpuStorage,
            ml: &Layout,
            vs: &CpuStorage,
            vl: &Layout,
        ) -> candle_core::Result<()> {
            let (m, v) = (values(self.name(), ms, ml)?, values(self.name(), vs, vl)?);
            let p = values_mut(self.name(), ps, pl)?;
            if p.len() != m.len() || p.len() != v.len() {
                candle_core::bail!("{}: sizes differ", self.name());
            }
            for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
                *p -= self.lr_t * m / (v.sqrt() + self.eps);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn param(x: &Var) -> Vec<Param> {
        vec![Param {
            name: "x/kernel".into(),
            var: x.clone(),
        }]
    }

    /// State goes out and comes back by name: a second optimizer restored from it takes the
    /// same next step; a state missing a slot or with another shape is refused.
    #[test]
    fn state_round_trips_by_name() {
        let x = Var::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap();
        let mut a = Adam::new(param(&x), AdamConfig::default()).unwrap();
        let grads = |x: &Var| {
            x.as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        a.step(&grads(&x), 1e-3).unwrap();
        let state = a.state().unwrap();
        assert_eq!(
            state.slots.keys().collect::<Vec<_>>(),
            ["x/kernel/m", "x/kernel/v"]
        );
        let y = Var::from_tensor(&x.as_tensor().copy().unwrap()).unwrap();
        let mut b = Adam::new(param(&y), AdamConfig::default()).unwrap();
        b.load_state(&state).unwrap();
        a.step(&grads(&x), 1e-3).unwrap();
        b.step(&grads(&y), 1e-3).unwrap();
        assert_eq!(
            x.as_tensor().to_vec1::<f32>().unwrap(),
            y.as_tensor().to_vec1::<f32>().unwrap()
        );
        let mut missing = state.clone();
        missing.slots.remove("x/kernel/v");
        assert!(b
            .load_state(&missing)
            .unwrap_err()
            .to_string()
            .contains("x/kernel/v"));
        let mut wrong = state.clone();
        wrong.slots.insert(
            "x/kernel/m".into(),
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(b.load_state(&wrong).is_err());
    }

    /// The in-place CPU path (f32) against the tensor-op path (taken for f64).
    #[test]
    fn in_place_update_matches_the_tensor_ops() {
        let start = [0.5f32, -1.5, 2.0, 0.0, 3.0, -0.25];
        let run = |dtype: candle_core::DType| -> Vec<f64> {
            let x = Var::from_tensor(
                &Tensor::new(&start, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let mut adam = Adam::new(param(&x), AdamConfig::default()).unwrap();
            for _ in 0..5 {
                // loss = sum(x^3): gradient 3x², a different size for each element.
                let loss = x.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
                adam.step(&loss.backward().unwrap(), 1e-3).unwrap();
            }
            x.as_tensor()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (fast, reference) = (run(candle_core::DType::F32), run(candle_core::DType::F64));
        for (a, b) in fast.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-6, "{fast:?} vs {reference:?}");
        }
        // Five steps of about lr each moved every non-zero element.
        assert!((fast[0] - 0.5).abs() > 4e-3);
    }

    /// Keras' rule worked by hand for a scalar: after one step with gradient g, the update is
    /// lr * sqrt(1-b2)/(1-b1) * (1-b1) g / (sqrt((1-b2) g^2) + eps) ≈ lr * sign(g).
    #[test]
    fn first_steps_follow_keras_formula() {
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(param(&x), AdamConfig::default()).unwrap();
        // loss = sum(x^2): gradient 2x.
        let (mut m, mut v, mut p) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
        for t in 1..=3 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap(), 1e-3).unwrap();
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
