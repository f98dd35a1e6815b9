//! `selftest --device cuda`: every layer kind's forward pass and gradients on a device against
//! the CPU's fast kernels, on small random shapes, to 1e-4 relative (TF32 off), and Adam's and
//! SGD's updates from the same gradients. `--device cpu` checks candle's own CPU ops against
//! the fast kernels the same way, and Adam's tensor-op update against its in-place one (what CI
//! can run).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use simplecnn_model::{
    Activation, ActivationConfig, AveragePooling2D, BatchNormConfig, Conv2dConfig, FeatureShape,
    Kernels, LayerKind, Mode, Model, Network, Padding, Pool2dConfig, RescalingConfig, TrainingPass,
};

use simplecnn_train::{Adam, AdamConfig, Optimizer, ParamGroup, Sgd, SgdConfig};

use crate::experiment::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct SelftestArgs {
    /// The device checked against the CPU's fast kernels.
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: DeviceArg,
    /// The largest relative difference allowed: max |a - b| / max(|b|, 1e-6), per tensor.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
}

/// The small networks that between them hold every layer kind.
fn cases() -> Result<Vec<(&'static str, Network)>> {
    let mut out = Vec::new();
    let mut a = Network::new("conv_pool_dense", FeatureShape::image(3, 9, 9));
    a.add(LayerKind::Rescaling(RescalingConfig {
        scale: vec![2.0, 0.5, 1.5],
        offset: vec![-1.0, 0.0, 0.25],
    }))?;
    a.add(LayerKind::Conv2d(Conv2dConfig::new(
        4,
        3,
        Padding::Same,
        Activation::Relu,
    )))?;
    a.add(LayerKind::max_pool(2))?;
    a.add(LayerKind::dropout(0.25))?;
    a.add(LayerKind::Flatten)?;
    a.add(LayerKind::dense(5, Activation::Softmax))?;
    out.push(("conv_pool_dense", a));

    let mut b = Network::new("bn_gelu_pools", FeatureShape::image(3, 10, 10));
    let mut conv = Conv2dConfig::new(6, 3, Padding::Valid, Activation::Linear);
    conv.use_bias = false;
    conv.strides = (2, 2);
    b.add(LayerKind::Conv2d(conv))?;
    b.add(LayerKind::BatchNorm(BatchNormConfig {
        momentum: 0.6,
        ..Default::default()
    }))?;
    b.add(LayerKind::Activation(ActivationConfig {
        activation: Activation::Gelu,
    }))?;
    b.add(LayerKind::AvgPool2d(AveragePooling2D(Pool2dConfig::new(2))))?;
    b.add(LayerKind::global_avg_pool())?;
    b.add(LayerKind::dense(3, Activation::Linear))?;
    out.push(("bn_gelu_pools", b));

    let mut c = Network::new("same_conv_maxpool_global", FeatureShape::image(2, 8, 8));
    c.add(LayerKind::Conv2d(Conv2dConfig::new(
        5,
        3,
        Padding::Same,
        Activation::Linear,
    )))?;
    c.add(LayerKind::Conv2d(Conv2dConfig::new(
        4,
        2,
        Padding::Valid,
        Activation::Relu,
    )))?;
    c.add(LayerKind::global_max_pool())?;
    c.add(LayerKind::dense(4, Activation::Relu))?;
    c.add(LayerKind::dense(2, Activation::Softmax))?;
    out.push(("same_conv_maxpool_global", c));
    Ok(out)
}

/// max |a - b| / max(|b|, 1e-6) over two tensors of one shape.
fn relative_difference(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f32> = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    if a.len() != b.len() {
        bail!("{} values against {}", a.len(), b.len());
    }
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    Ok((diff / scale) as f64)
}

/// What one network computes in a training step: the output, the gradient of a fixed random
/// projection of it with respect to every weight (training never needs the input's), and the
/// weights after (the moving statistics move in training mode).
fn step(model: &Model, x: &Tensor, projection: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let x = x.to_device(model.device())?;
    let mut dropout = TrainingPass::new(11);
    let out = model.logits(&x, Mode::Training(&mut dropout))?;
    let objective = (&out * projection.to_device(model.device())?)?.sum_all()?;
    let grads = objective.backward()?;
    let mut results = vec![
        ("logits, training".to_string(), out.clone()),
        (
            "probabilities, inference".to_string(),
            model.forward(&x, Mode::Inference)?,
        ),
    ];
    for w in model.weights() {
        if w.trainable {
            let g = grads
                .get(w.var.as_tensor())
                .with_context(|| format!("no gradient for {} ({:?})", w.path(), model.kernels()))?;
            results.push((format!("d {}", w.path()), g.clone()));
        }
        results.push((format!("{} after", w.path()), w.var.as_tensor().clone()));
    }
    Ok(results)
}

/// The optimizers the self-test updates with: Keras' Adam, and airbench94's SGD (Nesterov,
/// decoupled-scale weight decay, a parameter group for biases and BatchNorm's beta).
const OPTIMIZERS: &[&str] = &["adam", "sgd"];

fn optimizer(model: &Model, name: &str) -> Result<Box<dyn Optimizer>> {
    let params = simplecnn_train::trainable_params(model);
    Ok(match name {
        "adam" => Box::new(Adam::new(params, AdamConfig::default())?),
        _ => Box::new(Sgd::new(
            params,
            SgdConfig {
                momentum: 0.85,
                nesterov: true,
                weight_decay: 5e-4,
                groups: vec![ParamGroup {
                    roles: vec!["bias".into(), "beta".into()],
                    lr_scale: 4.0,
                    weight_decay: 1e-4,
                }],
            },
        )?),
    })
}

/// Three updates of a fresh `name` optimizer from `gradients` (one tensor per trainable
/// weight per step): the weights and the optimizer's slots after. `strided` hands the
/// gradients over as strided views, which keeps the CPU off Adam's in-place update, so that
/// `--device cpu` checks the tensor-op update CUDA runs against it.
fn optimizer_steps(
    model: &Model,
    name: &str,
    gradients: &[Vec<Tensor>],
    strided: bool,
) -> Result<Vec<(String, Tensor)>> {
    let mut opt = optimizer(model, name)?;
    let weights: Vec<_> = model.trainable_weights().collect();
    for step in gradients {
        // candle makes gradient stores only by backprop: one of a lone scalar, then filled.
        let mut grads = Var::zeros((), DType::F32, &Device::Cpu)?.backward()?;
        for (w, g) in weights.iter().zip(step) {
            let mut g = g.to_device(model.device())?;
            if strided {
                let last = g.rank();
                g = Tensor::stack(&[&g, &g], last)?
                    .narrow(last, 0, 1)?
                    .squeeze(last)?;
            }
            grads.insert(w.var.as_tensor(), g);
        }
        opt.step(&grads, 0.05)?;
    }
    let mut out: Vec<(String, Tensor)> = model
        .weights()
        .map(|w| {
            (
                format!("{} after {name}", w.path()),
                w.var.as_tensor().clone(),
            )
        })
        .collect();
    for (slot, t) in opt.state()?.slots {
        out.push((format!("{name} {slot}"), t));
    }
    Ok(out)
}

/// `spec` on the CPU's fast kernels and on `device` (candle's ops when that is the CPU too),
/// with the same weights.
fn model_pair(spec: &Network, device: &Device) -> Result<(Model, Model)> {
    let reference = Model::new(spec.clone(), &Device::Cpu, 3)?;
    let mut other = Model::new(spec.clone(), device, 3)?;
    if device.is_cpu() {
        other.set_kernels(Kernels::Candle)?;
    }
    for w in reference.weights() {
        other.set_weight(&w.layer, w.name, w.var.as_tensor())?;
    }
    Ok((reference, other))
}

/// Values uniform in [-√3, √3] (mean 0, variance 1) on the CPU.
fn random_tensor(rng: &mut impl Rng, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    let shape = shape.into();
    let bound = 3f32.sqrt();
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

pub fn run(args: SelftestArgs) -> Result<()> {
    // TF32 would round f32 products to 10-bit mantissas on the GPU: off for cuBLAS here, and
    // for cuDNN (whose default math allows it on Ampere and later) through NVIDIA's switch,
    // read when its first handle is made.
    std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    let device = crate::experiment::device(args.device.name())?;
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    // Seeded, so that a difference seen once can be looked at again.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut worst = 0f64;
    let mut failures = Vec::new();
    for (name, spec) in cases()? {
        let (reference, other) = model_pair(&spec, &device)?;
        let FeatureShape::Image {
            channels,
            height,
            width,
        } = spec.input_shape()
        else {
            bail!("{name}: not an image input");
        };
        let x = random_tensor(&mut rng, (4, channels, height, width))?;
        let classes = spec.output_shape().elem_count();
        let projection = random_tensor(&mut rng, (4, classes))?;
        let mut want = step(&reference, &x, &projection)?;
        let mut got = step(&other, &x, &projection)?;
        // The optimizers' updates on the device, from the same (random) gradients: gradients
        // from backprop would differ in their last bits, which Adam's division can magnify
        // where a gradient is nearly zero. Fresh copies of the weights for each.
        for optimizer in OPTIMIZERS {
            let (reference, other) = model_pair(&spec, &device)?;
            let gradients: Vec<Vec<Tensor>> = (0..3)
                .map(|_| {
                    reference
                        .trainable_weights()
                        .map(|w| random_tensor(&mut rng, w.var.dims()))
                        .collect()
                })
                .collect::<Result<_>>()?;
            want.extend(optimizer_steps(&reference, optimizer, &gradients, false)?);
            got.extend(optimizer_steps(
                &other,
                optimizer,
                &gradients,
                device.is_cpu(),
            )?);
        }
        for ((what, a), (_, b)) in got.iter().zip(&want) {
            let d = relative_difference(a, b).with_context(|| format!("{name}: {what}"))?;
            worst = worst.max(d);
            let verdict = if d <= args.tolerance { "ok" } else { "FAIL" };
            println!("{name:<26} {what:<40} {d:.2e} {verdict}");
            if d > args.tolerance {
                failures.push(format!("{name}: {what} ({d:.2e})"));
            }
        }
    }
    let backend = match args.device {
        DeviceArg::Cuda if cfg!(feature = "cudnn") => " (convolutions on cuDNN)",
        _ => "",
    };
    println!(
        "{}{backend} against the CPU's fast kernels: largest relative difference {worst:.2e} (tolerance {:.0e})",
        args.device.name().as_str(),
        args.tolerance
    );
    if !failures.is_empty() {
        bail!("{} tensors differ: {}", failures.len(), failures.join(", "));
    }
    Ok(())
}
