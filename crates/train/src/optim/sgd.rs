//! SGD with momentum, Nesterov and weight decay, exactly as PyTorch's `torch.optim.SGD` (no
//! dampening): `g = ∇L + λ·w`; `b = μ·b + g` (`b = g` at the first step); the step is `g + μ·b`
//! with Nesterov, else `b`; `w ← w − η·step`. The decay goes through the momentum (it is not
//! decoupled). Parameter groups give weights their own learning-rate scale and decay.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{backprop::GradStore, Tensor};
use serde::{Deserialize, Serialize};

use super::{slot, Optimizer, OptimizerState, Param};
use crate::error::{Result, TrainError};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    /// λ for weights in no group.
    pub weight_decay: f64,
    /// The first group whose `roles` holds a weight's role (`beta`, `kernel`, …) sets its
    /// learning-rate scale and decay.
    pub groups: Vec<ParamGroup>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    pub roles: Vec<String>,
    /// This group's learning rate is the schedule's times this.
    pub lr_scale: f64,
    pub weight_decay: f64,
}

#[derive(Debug)]
struct Slot {
    param: Param,
    lr_scale: f64,
    weight_decay: f64,
    /// `None` until the first step with a gradient.
    momentum: Option<Tensor>,
}

#[derive(Debug)]
pub struct Sgd {
    pub config: SgdConfig,
    slots: Vec<Slot>,
    iterations: u64,
    frozen: BTreeSet<String>,
}

impl Sgd {
    pub fn new(params: Vec<Param>, config: SgdConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&config.momentum) {
            return Err(TrainError::Config(format!(
                "momentum {} is not in [0, 1)",
                config.momentum
            )));
        }
        if config.nesterov && config.momentum == 0.0 {
            return Err(TrainError::Config("Nesterov needs a momentum".into()));
        }
        let slots = params
            .into_iter()
            .map(|param| {
                let role = param.name.rsplit('/').next().unwrap_or_default();
                let group = config
                    .groups
                    .iter()
                    .find(|g| g.roles.iter().any(|r| r == role));
                Slot {
                    lr_scale: group.map_or(1.0, |g| g.lr_scale),
                    weight_decay: group.map_or(config.weight_decay, |g| g.weight_decay),
                    param,
                    momentum: None,
                }
            })
            .collect();
        Ok(Self {
            config,
            slots,
            iterations: 0,
            frozen: BTreeSet::new(),
        })
    }

    /// Each weight's `(name, learning-rate scale, weight decay)`, in order.
    pub fn settings(&self) -> impl Iterator<Item = (&str, f64, f64)> {
        self.slots
            .iter()
            .map(|s| (s.param.name.as_str(), s.lr_scale, s.weight_decay))
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "SGD"
    }

    fn iterations(&self) -> u64 {
        self.iterations
    }

    fn slot_names(&self) -> &'static [&'static str] {
        &["momentum"]
    }

    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.iterations += 1;
        let mu = self.config.momentum;
        for s in &mut self.slots {
            let var = &s.param.var;
            // A frozen weight, or one without a gradient, gets no update, decay or momentum.
            if self.frozen.contains(&s.param.name) {
                continue;
            }
            let Some(g) = grads.get(var) else { continue };
            let mut g = g.detach();
            if s.weight_decay != 0.0 {
                g = (g + var.as_tensor().affine(s.weight_decay, 0.0)?)?;
            }
            let step = if mu == 0.0 {
                g
            } else {
                let b = match s.momentum.take() {
                    None => g.copy()?,
                    Some(b) => (b.affine(mu, 0.0)? + &g)?,
                };
                let step = match self.config.nesterov {
                    true => (&g + b.affine(mu, 0.0)?)?,
                    false => b.clone(),
                };
                s.momentum = Some(b.detach());
                step
            };
            var.set(&var.sub(&step.affine(lr * s.lr_scale, 0.0)?)?)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut slots = BTreeMap::new();
        for s in &self.slots {
            let b = match &s.momentum {
                Some(b) => b.copy()?,
                None => s.param.var.zeros_like()?,
            };
            slots.insert(format!("{}/momentum", s.param.name), b);
        }
        Ok(OptimizerState {
            iterations: self.iterations,
            slots,
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let restored = self
            .slots
            .iter()
            .map(|s| slot(state, &s.param, "momentum"))
            .collect::<Result<Vec<_>>>()?;
        for (s, b) in self.slots.iter_mut().zip(restored) {
            // PyTorch starts the buffer at the first gradient; a saved state after any step
            // holds it.
            s.momentum = (state.iterations > 0).then_some(b);
        }
        self.iterations = state.iterations;
        Ok(())
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("plain values")
    }

    fn set_frozen(&mut self, frozen: &BTreeSet<String>) {
        self.frozen = frozen.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Two weights in two groups, three Nesterov steps on loss = sum(w³), against the update
    /// written out in f64.
    #[test]
    fn nesterov_steps_follow_pytorch_formula() {
        let (w0, w1) = ([0.5f64, -1.0], [2.0f64]);
        let k = Var::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        let b = Var::new(&[2.0f32], &Device::Cpu).unwrap();
        let params = vec![
            Param {
                name: "conv2d_1/kernel".into(),
                var: k.clone(),
            },
            Param {
                name: "batch_normalization_1/beta".into(),
                var: b.clone(),
            },
        ];
        let config = SgdConfig {
            momentum: 0.85,
            nesterov: true,
            weight_decay: 0.1,
            groups: vec![ParamGroup {
                roles: vec!["beta".into()],
                lr_scale: 64.0,
                weight_decay: 0.01,
            }],
        };
        let mut sgd = Sgd::new(params, config).unwrap();
        let settings: Vec<_> = sgd.settings().map(|(_, s, d)| (s, d)).collect();
        assert_eq!(settings, [(1.0, 0.1), (64.0, 0.01)]);
        let lrs = [1e-3, 2e-3, 5e-4];
        let mut expected = [w0.to_vec(), w1.to_vec()];
        let mut bufs: [Option<Vec<f64>>; 2] = [None, None];
        let (scale, decay) = ([1.0, 64.0], [0.1, 0.01]);
        for lr in lrs {
            let loss = (k.as_tensor().powf(3.0).unwrap().sum_all().unwrap()
                + b.as_tensor().powf(3.0).unwrap().sum_all().unwrap())
            .unwrap();
            sgd.step(&loss.backward().unwrap(), lr).unwrap();
            for p in 0..2 {
                let w = &mut expected[p];
                let g: Vec<f64> = w.iter().map(|x| 3.0 * x * x + decay[p] * x).collect();
                let buf = match &bufs[p] {
                    None => g.clone(),
                    Some(b) => b.iter().zip(&g).map(|(b, g)| 0.85 * b + g).collect(),
                };
                for i in 0..w.len() {
                    w[i] -= lr * scale[p] * (g[i] + 0.85 * buf[i]);
                }
                bufs[p] = Some(buf);
            }
        }
        let got_k: Vec<f32> = k.as_tensor().to_vec1().unwrap();
        let got_b: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        for (g, e) in got_k
            .iter()
            .zip(&expected[0])
            .chain(got_b.iter().zip(&expected[1]))
        {
            assert!(
                (*g as f64 - e).abs() < 1e-5,
                "{got_k:?} {got_b:?} vs {expected:?}"
            );
        }
        assert_eq!(sgd.iterations(), 3);
        // The state holds each weight's buffer by name and restores into a fresh optimizer.
        let state = sgd.state().unwrap();
        assert!(state
            .slots
            .contains_key("batch_normalization_1/beta/momentum"));
        let config = sgd.config.clone();
        let params = vec![Param {
            name: "conv2d_1/kernel".into(),
            var: k.clone(),
        }];
        let mut fresh = Sgd::new(params, config).unwrap();
        fresh.load_state(&state).unwrap();
        assert_eq!(fresh.iterations(), 3);
    }

    #[test]
    fn a_weight_without_gradient_is_left_alone() {
        let a = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let frozen = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let params = ["a/kernel", "f/kernel"]
            .iter()
            .zip([&a, &frozen])
            .map(|(n, v)| Param {
                name: n.to_string(),
                var: v.clone(),
            })
            .collect();
        let cfg = SgdConfig {
            momentum: 0.9,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut sgd = Sgd::new(params, cfg).unwrap();
        let loss = a.as_tensor().sqr().unwrap().sum_all().unwrap();
        sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        assert_eq!(frozen.as_tensor().to_vec1::<f32>().unwrap(), [1.0]);
        // a: g = 2 + 0.5 = 2.5, w = 1 - 0.25.
        assert!((a.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.75).abs() < 1e-6);
        assert!(Sgd::new(
            vec![],
            SgdConfig {
                nesterov: true,
                ..Default::default()
            }
        )
        .is_err());
    }
}
