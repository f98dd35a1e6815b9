//! Keras' `ReLU(max_value, negative_slope, threshold)`: `x` from the threshold up to
//! `max_value`, `negative_slope · (x - threshold)` below it (MobileNet's `ReLU(6.0)`).

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReluConfig {
    pub max_value: Option<f32>,
    pub negative_slope: f32,
    pub threshold: f32,
}

impl Default for ReluConfig {
    fn default() -> Self {
        Self {
            max_value: None,
            negative_slope: 0.0,
            threshold: 0.0,
        }
    }
}

impl Layer for ReluConfig {
    fn class_name(&self) -> &'static str {
        "ReLU"
    }

    fn name_stem(&self) -> &'static str {
        "re_lu"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let finite = [self.negative_slope, self.threshold]
            .into_iter()
            .chain(self.max_value)
            .all(f32::is_finite);
        match (finite, self.max_value) {
            (false, _) => Err("max_value, negative_slope and threshold must be finite".into()),
            (_, Some(m)) if m < 0.0 => Err(format!("max_value {m} must not be negative")),
            _ if self.negative_slope < 0.0 => Err(format!(
                "negative_slope {} must not be negative",
                self.negative_slope
            )),
            _ => Ok(()),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let y = match (self.negative_slope, self.threshold) {
            (s, t) if s == 0.0 && t == 0.0 => x.relu()?,
            (s, t) => {
                let above = x.ge(t as f64)?;
                let below = ((x - t as f64)? * s as f64)?;
                above.where_cond(x, &below)?
            }
        };
        Ok(match self.max_value {
            Some(m) => y.minimum(m)?,
            None => y,
        })
    }
}
