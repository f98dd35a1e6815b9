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

/// Straight lines between `(fraction of the run, factor)` points, times `learning_rate`: e.g.
/// airbench's `[(0, 0.2), (0.23, 1), (1, 0.07)]`. A point's step is `floor(fraction · total)`,
/// as `np.interp` over `int(0.23 · total)` puts it; before the first and after the last the
/// factor stays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PiecewiseLinear {
    pub learning_rate: f64,
    pub total_steps: u64,
    pub points: Vec<(f64, f64)>,
}

impl PiecewiseLinear {
    /// Checks that the fractions rise from 0 to 1.
    pub fn new(
        learning_rate: f64,
        total_steps: u64,
        points: Vec<(f64, f64)>,
    ) -> Result<Self, String> {
        let rising = points.windows(2).all(|w| w[0].0 < w[1].0);
        let spans =
            points.first().map(|p| p.0) == Some(0.0) && points.last().map(|p| p.0) == Some(1.0);
        if points.len() < 2 || !rising || !spans {
            return Err(format!(
                "points {points:?} must rise from fraction 0 to fraction 1"
            ));
        }
        Ok(Self {
            learning_rate,
            total_steps,
            points,
        })
    }
}

impl Schedule for PiecewiseLinear {
    fn learning_rate(&self, step: u64) -> f64 {
        let at = |f: f64| (f * self.total_steps as f64).floor();
        let x = step as f64;
        let mut factor = self.points.last().map_or(1.0, |p| p.1);
        for w in self.points.windows(2) {
            let ((f0, y0), (f1, y1)) = (w[0], w[1]);
            let (x0, x1) = (at(f0), at(f1));
            if x <= x1 {
                factor = if x <= x0 || x1 == x0 {
                    y0
                } else {
                    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                };
                break;
            }
        }
        self.learning_rate * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// airbench's schedule for 476 steps: 0.2 at step 0, 1.0 at step int(0.23·476) = 109,
    /// 0.07 at 476, linear between, as `np.interp` gives.
    #[test]
    fn piecewise_linear_at_its_breakpoints_and_between() {
        let s = PiecewiseLinear::new(2.0, 476, vec![(0.0, 0.2), (0.23, 1.0), (1.0, 0.07)]).unwrap();
        let f = |step| s.learning_rate(step) / 2.0;
        assert!((f(0) - 0.2).abs() < 1e-12);
        assert!((f(109) - 1.0).abs() < 1e-12);
        assert!((f(476) - 0.07).abs() < 1e-12);
        assert!((f(500) - 0.07).abs() < 1e-12);
        let mid = 0.2 + 0.8 * 50.0 / 109.0;
        assert!((f(50) - mid).abs() < 1e-12);
        let down = 1.0 + (0.07 - 1.0) * (300.0 - 109.0) / (476.0 - 109.0);
        assert!((f(300) - down).abs() < 1e-12);
        assert!(PiecewiseLinear::new(1.0, 10, vec![(0.0, 1.0)]).is_err());
        assert!(PiecewiseLinear::new(1.0, 10, vec![(0.0, 1.0), (0.5, 2.0)]).is_err());
        assert!(PiecewiseLinear::new(1.0, 10, vec![(0.5, 1.0), (0.2, 1.0), (1.0, 2.0)]).is_err());
    }

    #[test]
    fn constant_is_constant() {
        let s = Constant {
            learning_rate: 1e-3,
        };
        assert_eq!(s.learning_rate(0), 1e-3);
        assert_eq!(s.learning_rate(10_000), 1e-3);
    }
}
