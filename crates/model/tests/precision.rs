//! `mixed_bfloat16`: the convolutions' products on bf16 operands give what f32 gives within
//! bf16's precision, forward and backward, and are not f32's (the bf16 path ran).

use candle_core::{Device, Tensor};
use simplecnn_model::{zoo, Mode, Model, Precision};

/// Images with values in [0, 1) from a formula (candle's CPU generator cannot be seeded).
fn images() -> Tensor {
    let n = 8 * 3 * 32 * 32;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    Tensor::from_vec(v, (8, 3, 32, 32), &Device::Cpu).unwrap()
}

/// Logits and every convolution kernel's gradient of the logits' sum of squares.
fn run(precision: Precision) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut model = Model::new(zoo::simple_cnn(), &Device::Cpu, 7).unwrap();
    model.set_precision(precision).unwrap();
    let logits = model.logits_with(&images(), Mode::Inference, true).unwrap();
    let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let kernels = model
        .weights()
        .filter(|w| w.layer.starts_with("conv2d") && w.name == "kernel")
        .map(|w| {
            grads
                .get(&w.var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    (logits.flatten_all().unwrap().to_vec1().unwrap(), kernels)
}

/// |a - b| / |b| over the whole vectors.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn bf16_products_stay_within_bf16_precision_of_f32() {
    let (logits32, grads32) = run(Precision::F32);
    let (logits16, grads16) = run(Precision::MixedBf16);
    let forward = relative(&logits16, &logits32);
    eprintln!("relative difference of the logits: {forward:.2e}");
    // bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.002 per operand).
    assert!(forward > 0.0, "the bf16 path ran: logits differ from f32's");
    assert!(forward < 1e-2, "logits {forward}");
    assert_eq!(grads16.len(), 2);
    for (g16, g32) in grads16.iter().zip(&grads32) {
        let r = relative(g16, g32);
        eprintln!("relative difference of a kernel gradient: {r:.2e}");
        assert!(r > 0.0 && r < 3e-2, "kernel gradient {r}");
    }
}

#[test]
fn bf16_runs_repeat_exactly() {
    assert_eq!(run(Precision::MixedBf16), run(Precision::MixedBf16));
}
