//! Each layer of the tutorial model, forward and backward at batch 128; one full training step;
//! inference on a batch of 1000. Throughput is in images (elements) per second.
//!
//! Every benchmark runs twice, `fast/…` with this project's CPU kernels and `candle/…` with
//! candle's own ops: the before and after of `simplecnn_model::ops`, side by side.

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simplecnn_cifar::Batch;
use simplecnn_model::{zoo, FeatureShape, Kernels, Mode, Model, Network, TrainingPass};
use simplecnn_train::{loss::Loss, train_step, trainable_params, Adam, AdamConfig};

const BATCH: usize = 128;

/// A one-layer model of the tutorial's layer `name`, with its input shape there.
const KERNELS: [(&str, Kernels); 2] = [("fast", Kernels::Fast), ("candle", Kernels::Candle)];

fn model(spec: Network, kernels: Kernels) -> Model {
    let mut model = Model::new(spec, &Device::Cpu, 0).unwrap();
    model.set_kernels(kernels).unwrap();
    model
}

fn single_layer(name: &str, kernels: Kernels) -> (Model, FeatureShape) {
    let spec = zoo::simple_cnn();
    let layer = spec
        .layers()
        .iter()
        .find(|l| l.name == name)
        .expect("layer of the tutorial");
    let mut s = Network::new(name, layer.input);
    s.add_named(name, layer.kind.clone()).unwrap();
    (model(s, kernels), layer.input)
}

fn layers(c: &mut Criterion) {
    // As the training command does: measure the kernels, not glibc returning memory to the OS.
    simplecnn_train::tune_cpu_runtime();
    let mut group = c.benchmark_group("layer_forward_backward_b128");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for name in [
        "conv2d_1",
        "max_pooling2d_1",
        "conv2d_2",
        "max_pooling2d_2",
        "dense_1",
    ] {
        for (label, kernels) in KERNELS {
            let (model, input) = single_layer(name, kernels);
            // The input is a variable, so backward computes its gradient as inside the network
            // (conv2d_1's input gradient is the one a real step could skip).
            let x = Var::from_tensor(
                &Tensor::rand(0f32, 1f32, input.batch_dims(BATCH), &Device::Cpu).unwrap(),
            )
            .unwrap();
            group.bench_function(BenchmarkId::new(label, name), |b| {
                b.iter(|| {
                    let y = model.forward(x.as_tensor(), Mode::Inference).unwrap();
                    y.sum_all().unwrap().backward().unwrap()
                })
            });
        }
    }
    group.finish();
}

fn training_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("training_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    for (label, kernels) in KERNELS {
        let model = model(zoo::simple_cnn(), kernels);
        let mut adam = Adam::new(trainable_params(&model), AdamConfig::default()).unwrap();
        let x = Tensor::rand(0f32, 1f32, (BATCH, 3, 32, 32), &Device::Cpu).unwrap();
        let one_hot: Vec<f32> = (0..BATCH * 10)
            .map(|i| if i % 10 == (i / 10) % 10 { 1.0 } else { 0.0 })
            .collect();
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();
        let batch = Batch {
            images: x,
            one_hot: Tensor::from_vec(one_hot, (BATCH, 10), &Device::Cpu).unwrap(),
            labels: Tensor::from_vec(labels, BATCH, &Device::Cpu).unwrap(),
        };
        let mut rng = TrainingPass::new(0);
        group.bench_function(BenchmarkId::new(label, "simple_cnn_b128"), |b| {
            b.iter(|| {
                train_step(&model, &mut adam, &Loss::default(), &batch, &mut rng, 1e-3).unwrap()
            })
        });
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    let x = Tensor::rand(0f32, 1f32, (1000, 3, 32, 32), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let mut group = c.benchmark_group("inference");
    group.throughput(Throughput::Elements(1000));
    group.sample_size(10);
    for (label, kernels) in KERNELS {
        let model = model(zoo::simple_cnn(), kernels);
        group.bench_function(BenchmarkId::new(label, "simple_cnn_b1000"), |b| {
            b.iter(|| model.forward(&x, Mode::Inference).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, layers, training_step, inference);
criterion_main!(benches);
