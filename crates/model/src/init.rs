//! Initialisations that depend on more than a weight's shape: the identity ("dirac") filters
//! PyTorch's `nn.init.dirac_` writes, and airbench's whitening convolution, whose filters are
//! the scaled eigenvectors of the input patches' second-moment matrix.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::model::{Mode, Model};

/// Sets the first `min(out, in)` filters of `layer`'s convolution kernel to the identity:
/// filter `i` is 1 at input channel `i`, kernel centre `(kh / 2, kw / 2)`, 0 elsewhere (what
/// airbench does with `torch.nn.init.dirac_(w[:w.size(1)])`). The other filters stay.
pub fn dirac(model: &Model, layer: &str) -> Result<()> {
    let w = model
        .weight(layer, "kernel")
        .ok_or_else(|| ModelError::Config(format!("no kernel in layer {layer}")))?;
    let &[out, inp, kh, kw] = w.var.dims() else {
        return Err(ModelError::Shape {
            layer: layer.into(),
            message: "dirac needs a convolution kernel".into(),
        });
    };
    let mut values: Vec<f32> = w.var.as_tensor().flatten_all()?.to_vec1()?;
    let per_filter = inp * kh * kw;
    for i in 0..out.min(inp) {
        let filter = &mut values[i * per_filter..(i + 1) * per_filter];
        filter.fill(0.0);
        filter[(i * kh + kh / 2) * kw + kw / 2] = 1.0;
    }
    let t = Tensor::from_vec(values, (out, inp, kh, kw), &Device::Cpu)?;
    model.set_weight(layer, "kernel", &t)
}

/// The whitening filters for `(kh, kw)` patches of `x (N, C, H, W)`: with `M` the uncentred
/// second-moment matrix of all valid patches (flattened in `(c, i, j)` order), each eigenvector
/// `v` of `M` with eigenvalue `λ`, largest first, becomes the filter `v / sqrt(λ + eps)`,
/// followed by the same filters negated: `(2·C·kh·kw, C, kh, kw)`.
pub fn whitening_kernel(x: &Tensor, (kh, kw): (usize, usize), eps: f64) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h < kh || w < kw || n == 0 {
        return Err(ModelError::Config(format!(
            "whitening: {n} images of {h}x{w} have no {kh}x{kw} patches"
        )));
    }
    let values: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let d = c * kh * kw;
    let mut m = vec![0f64; d * d];
    let mut patch = vec![0f64; d];
    let mut count = 0usize;
    for img in values.chunks_exact(c * h * w) {
        for y in 0..=h - kh {
            for xx in 0..=w - kw {
                for ch in 0..c {
                    for i in 0..kh {
                        for j in 0..kw {
                            patch[(ch * kh + i) * kw + j] =
                                img[(ch * h + y + i) * w + xx + j] as f64;
                        }
                    }
                }
                for a in 0..d {
                    for b in a..d {
                        m[a * d + b] += patch[a] * patch[b];
                    }
                }
                count += 1;
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            m[a * d + b] /= count as f64;
            m[b * d + a] = m[a * d + b];
        }
    }
    let (eigenvalues, vectors) = symmetric_eigen(&m, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eigenvalues[b].total_cmp(&eigenvalues[a]));
    let mut kernel = Vec::with_capacity(2 * d * d);
    for sign in [1.0, -1.0] {
        for &k in &order {
            let scale = sign / (eigenvalues[k] + eps).sqrt();
            kernel.extend((0..d).map(|r| (vectors[r * d + k] * scale) as f32));
        }
    }
    Ok(Tensor::from_vec(kernel, (2 * d, c, kh, kw), &Device::Cpu)?)
}

/// Eigenvalues and eigenvectors (as the columns of a row-major `d x d` matrix) of the
/// symmetric matrix `a`, by cyclic Jacobi rotations (exact to f64 rounding for the small
/// matrices here: d = 12 for airbench).
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|p| (0..d).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * d + q].powi(2))
            .sum();
        let scale: f64 = (0..d)
            .map(|i| a[i * d + i].powi(2))
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (cs, sn) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = cs * akp - sn * akq;
                    a[k * d + q] = sn * akp + cs * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = cs * apk - sn * aqk;
                    a[q * d + k] = sn * apk + cs * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = cs * vkp - sn * vkq;
                    v[k * d + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// Sets `layer`'s kernel to [`whitening_kernel`] of what reaches it when the model runs on
/// `images` (the layers before it, in inference).
pub fn init_whitening(model: &Model, layer: &str, images: &Tensor, eps: f64) -> Result<()> {
    let w = model
        .weight(layer, "kernel")
        .ok_or_else(|| ModelError::Config(format!("no kernel in layer {layer}")))?;
    let &[out, inp, kh, kw] = w.var.dims() else {
        return Err(ModelError::Config(format!("{layer} is not a convolution")));
    };
    if out != 2 * inp * kh * kw {
        return Err(ModelError::Shape {
            layer: layer.into(),
            message: format!(
                "whitening needs {} filters (2 · {inp} · {kh} · {kw}), the layer has {out}",
                2 * inp * kh * kw
            ),
        });
    }
    let x = model.features_before(images, layer, Mode::Inference)?;
    let kernel = whitening_kernel(&x, (kh, kw), eps)?;
    model.set_weight(layer, "kernel", &kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let d = 4;
        let a = [
            4.0, 1.0, -2.0, 0.5, 1.0, 3.0, 0.0, 1.5, -2.0, 0.0, 5.0, -1.0, 0.5, 1.5, -1.0, 2.0,
        ];
        let (vals, v) = symmetric_eigen(&a, d);
        for k in 0..d {
            // A v_k = λ_k v_k, and v_k has unit length.
            for r in 0..d {
                let av: f64 = (0..d).map(|c| a[r * d + c] * v[c * d + k]).sum();
                assert!((av - vals[k] * v[r * d + k]).abs() < 1e-9);
            }
            let norm: f64 = (0..d).map(|r| v[r * d + k].powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-9);
        }
        let trace: f64 = (0..d).map(|i| a[i * d + i]).sum();
        assert!((vals.iter().sum::<f64>() - trace).abs() < 1e-9);
    }

    /// Whitened patches: the filters applied to the patches give outputs whose second-moment
    /// matrix (over the first half of the filters) is the identity, up to the eps term.
    #[test]
    fn whitening_filters_whiten_the_patches() {
        let x = Tensor::rand(0f32, 1f32, (6, 3, 8, 8), &Device::Cpu).unwrap();
        let x = (x.clone()
            + x.narrow(1, 0, 1)
                .unwrap()
                .broadcast_as((6, 3, 8, 8))
                .unwrap())
        .unwrap();
        let k = whitening_kernel(&x, (2, 2), 0.0).unwrap();
        assert_eq!(k.dims(), &[24, 3, 2, 2]);
        let y = x.conv2d(&k.narrow(0, 0, 12).unwrap(), 0, 1, 1, 1).unwrap();
        let (n, c, h, w) = y.dims4().unwrap();
        let y = y
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape((n * h * w, c))
            .unwrap();
        let m = (y.t().unwrap().matmul(&y).unwrap() / (n * h * w) as f64).unwrap();
        let m: Vec<Vec<f32>> = m.to_vec2().unwrap();
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let e = if i == j { 1.0 } else { 0.0 };
                assert!((v - e).abs() < 2e-3, "M[{i}][{j}] = {v}");
            }
        }
        // The negated half mirrors the first.
        let a: Vec<f32> = k
            .narrow(0, 0, 12)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = k
            .narrow(0, 12, 12)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(a.iter().zip(&b).all(|(a, b)| *a == -*b));
    }

    /// After `dirac`, a 'same' convolution passes its first input channels through unchanged
    /// in its first filters; the other filters keep their initial values.
    #[test]
    fn dirac_filters_pass_channels_through() {
        use crate::{Activation, FeatureShape, LayerKind, Network, Padding};
        let mut s = Network::new("m", FeatureShape::image(3, 5, 5));
        s.add(LayerKind::Conv2d(
            crate::Conv2dConfig::new(4, 3, Padding::Same, Activation::Linear).without_bias(),
        ))
        .unwrap();
        let model = Model::new(s, &Device::Cpu, 1).unwrap();
        let before: Vec<f32> = model
            .weight("conv2d_1", "kernel")
            .unwrap()
            .var
            .as_tensor()
            .narrow(0, 3, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        dirac(&model, "conv2d_1").unwrap();
        let x = Tensor::rand(-1f32, 1f32, (2, 3, 5, 5), &Device::Cpu).unwrap();
        let y = model.forward(&x, Mode::Inference).unwrap();
        let first: Vec<f32> = y
            .narrow(1, 0, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in first.iter().zip(&xs) {
            assert!((a - b).abs() < 1e-6);
        }
        let after: Vec<f32> = model
            .weight("conv2d_1", "kernel")
            .unwrap()
            .var
            .as_tensor()
            .narrow(0, 3, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(before, after);
    }
}
