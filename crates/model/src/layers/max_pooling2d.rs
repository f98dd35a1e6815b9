//! Keras' `MaxPooling2D(pool_size, strides, padding)`: `valid` (Keras' default) drops what does
//! not fill a window; `same` pads, and padded positions never win the maximum.

use std::ops::Deref;

use candle_core::{Tensor, Var};

use super::{cannot_take, FeatureShape, ForwardCtx, Layer, Padding};
use crate::error::Result;

/// A pooling window and its strides (Keras: the strides default to the pool size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    pub pool_size: (usize, usize),
    pub strides: (usize, usize),
    pub padding: Padding,
}

impl Pool2dConfig {
    pub fn new(pool: usize) -> Self {
        Self {
            pool_size: (pool, pool),
            strides: (pool, pool),
            padding: Padding::Valid,
        }
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let (p, s) = (self.pool_size, self.strides);
        if p.0 == 0 || p.1 == 0 || s.0 == 0 || s.1 == 0 {
            return Err(format!(
                "pool_size {p:?} and strides {s:?} must be at least 1"
            ));
        }
        Ok(())
    }

    pub(crate) fn output_shape(
        &self,
        class: &str,
        input: &FeatureShape,
    ) -> std::result::Result<FeatureShape, String> {
        let FeatureShape::Image {
            channels,
            height,
            width,
        } = *input
        else {
            return Err(cannot_take(class, input));
        };
        let h = self
            .padding
            .output_len(height, self.pool_size.0, self.strides.0);
        let w = self
            .padding
            .output_len(width, self.pool_size.1, self.strides.1);
        match (h, w) {
            (Some((h, _, _)), Some((w, _, _))) if h > 0 && w > 0 => {
                Ok(FeatureShape::image(channels, h, w))
            }
            _ => Err(format!(
                "pool {:?} stride {:?} does not fit input {height}x{width}",
                self.pool_size, self.strides
            )),
        }
    }

    /// `(top, bottom), (left, right)` padding for an `h x w` input (none when `valid`).
    pub(crate) fn pads(&self, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
        let side = |len, pool, stride| {
            self.padding
                .output_len(len, pool, stride)
                .map_or((0, 0), |(_, before, after)| (before, after))
        };
        (
            side(h, self.pool_size.0, self.strides.0),
            side(w, self.pool_size.1, self.strides.1),
        )
    }

    /// `x` zero-padded as `same` asks, and a mask of ones where `x` was (zeros in the padding).
    pub(crate) fn padded_with_mask(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = x.dims4()?;
        let ((top, bottom), (left, right)) = self.pads(h, w);
        let pad = |t: &Tensor| -> Result<Tensor> {
            Ok(t.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?)
        };
        Ok((pad(x)?, pad(&x.ones_like()?)?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPooling2D(pub Pool2dConfig);

impl Deref for MaxPooling2D {
    type Target = Pool2dConfig;
    fn deref(&self) -> &Pool2dConfig {
        &self.0
    }
}

impl Layer for MaxPooling2D {
    fn class_name(&self) -> &'static str {
        "MaxPooling2D"
    }

    fn name_stem(&self) -> &'static str {
        "max_pooling2d"
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.0.validate()
    }

    fn output_shape(&self, input: &FeatureShape) -> std::result::Result<FeatureShape, String> {
        self.0.output_shape(self.class_name(), input)
    }

    /// candle 0.11.1's `max_pool2d` backward divides the gradient by the window size and
    /// misplaces it when the input is not a multiple of the pool (tests/cpu_ops.rs pins both):
    /// see [`max_pool_valid`]. `same` padding pads with values that never win (the mask picks
    /// `f32::MIN` there).
    fn forward(&self, x: &Tensor, _: &[Var], _: &mut ForwardCtx<'_>) -> Result<Tensor> {
        let x = match self.padding {
            Padding::Valid => x.clone(),
            Padding::Same => {
                let (xp, inside) = self.padded_with_mask(x)?;
                let floor = xp.ones_like()?.affine(f32::MIN as f64, 0.0)?;
                inside.ge(0.5)?.where_cond(&xp, &floor)?
            }
        };
        max_pool_valid(&x, self.pool_size, self.strides)
    }
}

/// Max pooling without padding on candle's ops, with a right gradient. Windows that do not
/// overlap are a crop to whole windows (Keras' "valid" pooling drops the rest), a reshape and
/// two max reductions, whose backward sends the gradient to the maxima. Overlapping windows
/// (ResNet's 3x3 stride 2) are the element-wise maximum of the window's strided views.
fn max_pool_valid(
    x: &Tensor,
    (ph, pw): (usize, usize),
    (sh, sw): (usize, usize),
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (ph, pw) != (sh, sw) {
        let mut views = window_views(x, (ph, pw), (sh, sw))?.into_iter();
        let first = views.next().expect("a pool of at least 1x1");
        return views.try_fold(first, |m, v| Ok(m.maximum(&v)?));
    }
    let (oh, ow) = (h / ph, w / pw);
    Ok(x.narrow(2, 0, oh * ph)?
        .narrow(3, 0, ow * pw)?
        .reshape((n, c, oh, ph, ow, pw))?
        .max(5)?
        .max(3)?)
}

/// The `ph·pw` views of `x` a pooling window sees, each `(N, C, out_h, out_w)`: view `(i, j)`
/// holds every window's value at offset `(i, j)`. Each is two `index_select`s, whose backward
/// scatters the gradient back to where the value came from, so any reduction over them (max,
/// mean) has a right gradient even where windows overlap (candle's pools lack one there).
pub(crate) fn window_views(
    x: &Tensor,
    (ph, pw): (usize, usize),
    (sh, sw): (usize, usize),
) -> Result<Vec<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = ((h - ph) / sh + 1, (w - pw) / sw + 1);
    let rows = |start: usize, count: usize, stride: usize| -> Result<Tensor> {
        let index: Vec<u32> = (0..count).map(|k| (start + k * stride) as u32).collect();
        Ok(Tensor::from_vec(index, count, x.device())?)
    };
    let mut views = Vec::with_capacity(ph * pw);
    for di in 0..ph {
        let band = x.index_select(&rows(di, oh, sh)?, 2)?;
        for dj in 0..pw {
            views.push(band.index_select(&rows(dj, ow, sw)?, 3)?);
        }
    }
    Ok(views)
}
