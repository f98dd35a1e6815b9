//! An operation node of Keras 3: arithmetic written on a tensor and a number
//! (`layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)`, MobileNetV3's hard sigmoid). Keras saves these
//! as nodes of `keras.src.ops.numpy` whose class names (`Add`, `Multiply`) collide with the
//! layers'; they have no weights and are not layers to Keras (no entry in a weights tree).

use candle_core::{Tensor, Var};

use super::{FeatureShape, ForwardCtx, Layer};
use crate::error::Result;

/// Which arithmetic: Keras' class names of `keras.ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarOpKind {
    Add,
    Subtract,
    Multiply,
    Divide,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalarOp {
    pub op: ScalarOpKind,
    pub value: f32,
    /// The number is the first operand (`3.0 - x`).
    pub number_first: bool,
}

impl ScalarOpKind {
    /// Keras' class name of the operation (`Add`, `TrueDivide`, …).
    pub fn keras_name(self) -> &'static str {
        match self {
            ScalarOpKind::Add => "Add",
            ScalarOpKind::Subtract => "Subtract",
            ScalarOpKind::Multiply => "Multiply",
            ScalarOpKind::Divide => "TrueDivide",
        }
    }

    /// The operation Keras calls `class`.
    pub fn from_keras_name(class: &str) -> Option<Self> {
        match class {
            "Add" => Some(ScalarOpKind::Add),
            "Subtract" => Some(ScalarOpKind::Subtract),
            "Multiply" => Some(ScalarOpKind::Multiply),
            "TrueDivide" | "Divide" => Some(ScalarOpKind::Divide),
            _ => None,
        }
    }
}

impl Layer for ScalarOp {
    fn class_name(&self) -> &'static str {
        self.op.keras_name()
    }

    fn name_stem(&self) -> &'static str {
        match self.op {
            ScalarOpKind::Add => "add",
            ScalarOpKind::Subtract => "subtract",
            ScalarOpKind::Multiply => "multiply",
            ScalarOpKind::Divide => "true_divide",
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.value.is_finite() {
            true => Ok(()),
            false => Err(format!("the number {} is not finite", self.value)),
        }
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        Ok(*input)
    }

    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let v = self.value as f64;
        Ok(match (self.op, self.number_first) {
            (ScalarOpKind::Add, _) => x.affine(1.0, v)?,
            (ScalarOpKind::Multiply, _) => x.affine(v, 0.0)?,
            (ScalarOpKind::Subtract, false) => x.affine(1.0, -v)?,
            (ScalarOpKind::Subtract, true) => x.affine(-1.0, v)?,
            (ScalarOpKind::Divide, false) => x.affine(1.0 / v, 0.0)?,
            (ScalarOpKind::Divide, true) => (x.recip()? * v)?,
        })
    }
}
