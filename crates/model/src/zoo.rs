//! Ready-made networks: the tutorial's SimpleCNN and VGG-16.

use crate::error::Result;
use crate::layers::{Activation, Conv2dConfig, FeatureShape, LayerKind, Padding};
use crate::network::Network;

/// The tutorial's network for 32x32 RGB images and 10 classes (545 098 parameters):
/// Conv2D(32) → MaxPool → Dropout → Conv2D(64) → MaxPool → Flatten → Dropout → Dense(128) →
/// Dropout → Dense(10, softmax).
pub fn simple_cnn() -> Network {
    simple_cnn_for(FeatureShape::image(3, 32, 32), 10).expect("the tutorial's shapes fit")
}

/// SimpleCNN for another input size or number of classes.
pub fn simple_cnn_for(input: FeatureShape, classes: usize) -> Result<Network> {
    let conv = |filters| {
        LayerKind::Conv2d(Conv2dConfig::new(
            filters,
            3,
            Padding::Same,
            Activation::Relu,
        ))
    };
    let pool = || LayerKind::max_pool(2);
    let dropout = || LayerKind::dropout(0.25);
    let mut s = Network::new("sequential_1", input);
    s.add(conv(32))?.add(pool())?.add(dropout())?;
    s.add(conv(64))?
        .add(pool())?
        .add(LayerKind::Flatten)?
        .add(dropout())?;
    s.add(LayerKind::dense(128, Activation::Relu))?
        .add(dropout())?;
    s.add(LayerKind::dense(classes, Activation::Softmax))?;
    Ok(s)
}

/// VGG-16 as Keras' `applications.VGG16(include_top=True)`: 224x224x3 input, 1000 classes,
/// 138 357 544 parameters, layers named `block1_conv1` … `predictions`.
pub fn vgg16() -> Network {
    let mut s = vgg16_base(FeatureShape::image(3, 224, 224)).expect("224x224 fits");
    s.add_named("flatten", LayerKind::Flatten).expect("flatten");
    for (name, units) in [("fc1", 4096), ("fc2", 4096)] {
        s.add_named(name, LayerKind::dense(units, Activation::Relu))
            .expect("dense");
    }
    let predictions = LayerKind::dense(1000, Activation::Softmax);
    s.add_named("predictions", predictions).expect("dense");
    s
}

/// VGG-16's convolutional base, Keras' `applications.VGG16(include_top=False, input_shape=…)`:
/// the five blocks, 14 714 688 parameters for any input of at least 32x32 (CIFAR-10's
/// images give a 1x1x512 output).
pub fn vgg16_base(input: FeatureShape) -> Result<Network> {
    let mut s = Network::new("vgg16", input);
    s.add_named("input_1", LayerKind::Input)?;
    for (block, (filters, convs)) in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
        .into_iter()
        .enumerate()
    {
        for c in 1..=convs {
            let conv = Conv2dConfig::new(filters, 3, Padding::Same, Activation::Relu);
            s.add_named(
                format!("block{}_conv{c}", block + 1),
                LayerKind::Conv2d(conv),
            )?;
        }
        let pool = LayerKind::max_pool(2);
        s.add_named(format!("block{}_pool", block + 1), pool)?;
    }
    Ok(s)
}
