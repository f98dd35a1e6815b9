//! `mixed_bfloat16`: the convolutions' and Dense layers' products on bf16 operands give what
//! f32 gives within bf16's precision, forward and backward, and are not f32's (the bf16 path
//! ran).

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

/// `t` with every value rounded to bf16 (to nearest even), as f32.
fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(candle_core::DType::BF16)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
}

fn max_relative(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// A Dense layer under `mixed_bfloat16`: output, input and kernel gradients are the f32
/// products of bf16-rounded operands (to f32 summation's error), not the unrounded ones; the
/// bias gradient is f32's; a layer narrower than 32 outputs computes its forward in f32.
#[test]
fn dense_products_take_bf16_operands() {
    use candle_core::Var;
    use simplecnn_model::ops::{dense, dense_in, BatchShard};
    let rand = |dims: &[usize], seed: usize| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i + seed * 7717) * 2654435761usize) % 10007) as f32 / 5003.5 - 1.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    };
    let whole = BatchShard::whole();
    let (n, k, o) = (19, 70, 40);
    let x = Var::from_tensor(&rand(&[n, k], 1)).unwrap();
    let w = Var::from_tensor(&rand(&[k, o], 2)).unwrap();
    let b = Var::from_tensor(&rand(&[o], 3)).unwrap();
    let r = rand(&[n, o], 4);
    let y = dense_in(&x, &w, &b, &whole, Precision::MixedBf16).unwrap();
    let y_ref = rounded(&x)
        .matmul(&rounded(&w))
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let y32 = dense(&x, &w, &b, &whole).unwrap();
    assert!(
        max_relative(&y, &y_ref) < 1e-5,
        "{}",
        max_relative(&y, &y_ref)
    );
    assert!(
        max_relative(&y32, &y_ref) > 1e-4,
        "rounding changed nothing"
    );
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx_ref = rounded(&r).matmul(&rounded(&w).t().unwrap()).unwrap();
    let dk_ref = rounded(&x).t().unwrap().matmul(&rounded(&r)).unwrap();
    let db_ref = r.sum(0).unwrap();
    for (what, var, reference, tolerance) in [
        ("dx", &x, dx_ref, 1e-5),
        ("dk", &w, dk_ref, 1e-5),
        ("db", &b, db_ref, 1e-6),
    ] {
        let d = max_relative(grads.get(var).unwrap(), &reference);
        assert!(d < tolerance, "{what}: {d}");
    }
    // Ten outputs: a bf16 tile would be mostly empty; the forward stays f32.
    let w10 = rand(&[k, 10], 5);
    let b10 = rand(&[10], 6);
    let narrow = dense_in(&x, &w10, &b10, &whole, Precision::MixedBf16).unwrap();
    let narrow32 = dense(&x, &w10, &b10, &whole).unwrap();
    assert_eq!(
        narrow.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        narrow32.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}
