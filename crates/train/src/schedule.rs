//! Learning-rate schedules: the rate for each optimizer step. What a schedule gives is what
//! the optimizer uses and what the logs show.

use serde::{Deserialize, Serialize};

/// The learning rate as a function of the step.
pub trait Schedule {
    /// The rate for step `step` (0-based, counted over the whole run).
    fn learning_rate(&self, step: u64) -> f64;
}

/// The same rate at every step (Keras' default: a float `learning_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Constant {
    pub learning_rate: f64,
}

impl Schedule for Constant {
    fn learning_rate(&self, _step: u64) -> f64 {
        self.learning_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_constant() {
        let s = Constant {
            learning_rate: 1e-3,
        };
        assert_eq!(s.learning_rate(0), 1e-3);
        assert_eq!(s.learning_rate(10_000), 1e-3);
    }
}
