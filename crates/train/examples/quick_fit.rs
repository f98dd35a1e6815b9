//! Trains the tutorial's network on the first N CIFAR-10 training images and evaluates it.
//!
//! `cargo run --release -p simplecnn-train --example quick_fit -- data/ 5000 2`

use simplecnn_model::{zoo, Model};
use simplecnn_train::{evaluate, fit, trainable_params, Adam, AdamConfig, Constant, FitConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "data".into());
    let n: usize = args.next().map_or(Ok(5000), |s| s.parse())?;
    let epochs: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let data = simplecnn_cifar::load(std::path::Path::new(&dir))?;
    let model = Model::new(zoo::simple_cnn(), &candle_core::Device::Cpu, 0)?;
    let mut adam = Adam::new(trainable_params(&model), AdamConfig::default())?;
    let config = FitConfig {
        epochs,
        ..Default::default()
    };
    let lr = Constant {
        learning_rate: adam.config.learning_rate,
    };
    let history = fit(
        &model,
        &mut adam,
        &lr,
        &data.train.take(n),
        &config,
        &mut [],
    )?;
    for e in &history.epochs {
        println!("{}", e.keras_line(epochs));
    }
    let test = evaluate(&model, &data.test, 128)?;
    println!(
        "test loss: {:.4} - test accuracy: {:.4}",
        test.loss, test.accuracy
    );
    Ok(())
}
