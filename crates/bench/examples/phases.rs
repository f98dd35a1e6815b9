//! Where a training step's time goes: forward, backward, optimizer (wall and process CPU ms,
//! means over steps); with INFERENCE set, a 1000-image inference batch instead. `cargo run --release -p simplecnn-bench --example phases -- DATA_DIR`
use std::time::Instant;

use candle_core::Device;
use simplecnn_bench::cpu_seconds;
use simplecnn_model::{zoo, Mode, Model, TrainingPass};
use simplecnn_train::{
    loss::categorical_cross_entropy, trainable_params, Adam, AdamConfig, Optimizer,
};

fn main() -> anyhow::Result<()> {
    simplecnn_train::tune_cpu_runtime();
    if let Ok(v) = std::env::var("LHS_T") {
        gemm::set_lhs_packing_threshold_single_thread(v.parse()?);
    }
    if let Ok(v) = std::env::var("RHS_T") {
        gemm::set_rhs_packing_threshold(v.parse()?);
    }
    let dir = std::env::args().nth(1).unwrap_or_else(|| "data".into());
    let data = simplecnn_cifar::load(std::path::Path::new(&dir))?;
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 0)?;
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default())?;
    let mut rng = TrainingPass::new(0);
    if std::env::var_os("INFERENCE").is_some() {
        // Batches of 1000, as the harness predicts.
        let (mut wall, mut cpu) = (0.0, 0.0);
        for b in 0..10 {
            let idx: Vec<usize> = (b * 1000..b * 1000 + 1000).collect();
            let batch = data.test.batch(&idx, &Device::Cpu)?;
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let _ = model
                .forward(&batch.images, Mode::Inference)?
                .to_vec2::<f32>()?;
            if b >= 2 {
                wall += t0.elapsed().as_secs_f64() * 1e3 / 8.0;
                cpu += (cpu_seconds() - c0) * 1e3 / 8.0;
            }
        }
        println!("inference, 1000 images: {wall:.1} ms wall, {cpu:.1} ms CPU");
        return Ok(());
    }
    let mut rows: Vec<[f64; 6]> = Vec::new();
    for step in 0..100 {
        let idx: Vec<usize> = (step * 128..step * 128 + 128).collect();
        let batch = data.train.batch(&idx, &Device::Cpu)?;
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let logits = model.logits(&batch.images, Mode::Training(&mut rng))?;
        let loss = categorical_cross_entropy(&logits, &batch.one_hot)?;
        let (t1, c1) = (Instant::now(), cpu_seconds());
        let (t2, c2) = (Instant::now(), cpu_seconds());
        if std::env::var_os("FORWARD_ONLY").is_none() {
            adam.step(&loss.backward()?, 1e-3)?;
        }
        let (t3, c3) = (Instant::now(), cpu_seconds());
        if step >= 5 {
            rows.push([
                (t1 - t0).as_secs_f64() * 1e3,
                (c1 - c0) * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (c2 - c1) * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
                (c3 - c2) * 1e3,
            ]);
        }
    }
    let mean = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64;
    println!(
        "forward {:.1} ms wall, {:.1} ms CPU; backward {:.1} / {:.1}; adam {:.1} / {:.1}",
        mean(0),
        mean(1),
        mean(2),
        mean(3),
        mean(4),
        mean(5)
    );
    Ok(())
}
