//! Prints Keras' summary of the tutorial's network and of VGG-16 with a 16-class head.
//!
//! `cargo run -p simplecnn-model --example summary`

use simplecnn_model::{zoo, Activation, LayerKind};

fn main() -> Result<(), simplecnn_model::ModelError> {
    print!("{}", zoo::simple_cnn().summary());
    let mut vgg = zoo::vgg16();
    vgg.add(LayerKind::dense(16, Activation::Softmax))?;
    print!("{}", vgg.summary());
    Ok(())
}
