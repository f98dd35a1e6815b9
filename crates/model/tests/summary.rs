//! The summary tables against the tutorial's (Keras 2) numbers.

use simplecnn_model::{zoo, Activation, FeatureShape, LayerKind};

/// Keras 2.1's `model.summary()` for the tutorial's network, as the tutorial printed it.
const TUTORIAL_TABLE: &str = "\
_________________________________________________________________
Layer (type)                 Output Shape              Param #   
=================================================================
conv2d_1 (Conv2D)            (None, 32, 32, 32)        896       
_________________________________________________________________
max_pooling2d_1 (MaxPooling2 (None, 16, 16, 32)        0         
_________________________________________________________________
dropout_1 (Dropout)          (None, 16, 16, 32)        0         
_________________________________________________________________
conv2d_2 (Conv2D)            (None, 16, 16, 64)        18496     
_________________________________________________________________
max_pooling2d_2 (MaxPooling2 (None, 8, 8, 64)          0         
_________________________________________________________________
flatten_1 (Flatten)          (None, 4096)              0         
_________________________________________________________________
dropout_2 (Dropout)          (None, 4096)              0         
_________________________________________________________________
dense_1 (Dense)              (None, 128)               524416    
_________________________________________________________________
dropout_3 (Dropout)          (None, 128)               0         
_________________________________________________________________
dense_2 (Dense)              (None, 10)                1290      
=================================================================
Total params: 545,098
Trainable params: 545,098
Non-trainable params: 0
_________________________________________________________________
";

#[test]
fn simple_cnn_summary_matches_the_tutorial_row_by_row() {
    let ours = zoo::simple_cnn().summary();
    let expected: Vec<&str> = TUTORIAL_TABLE.lines().collect();
    let got: Vec<&str> = ours.lines().collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "line {i}");
    }
    assert_eq!(got.len(), expected.len());
}

/// (name, type, Keras output shape, params) of every VGG-16 layer, from Keras' table.
const VGG16_ROWS: &[(&str, &str, &str, usize)] = &[
    ("input_1", "InputLayer", "(None, 224, 224, 3)", 0),
    ("block1_conv1", "Conv2D", "(None, 224, 224, 64)", 1_792),
    ("block1_conv2", "Conv2D", "(None, 224, 224, 64)", 36_928),
    ("block1_pool", "MaxPooling2D", "(None, 112, 112, 64)", 0),
    ("block2_conv1", "Conv2D", "(None, 112, 112, 128)", 73_856),
    ("block2_conv2", "Conv2D", "(None, 112, 112, 128)", 147_584),
    ("block2_pool", "MaxPooling2D", "(None, 56, 56, 128)", 0),
    ("block3_conv1", "Conv2D", "(None, 56, 56, 256)", 295_168),
    ("block3_conv2", "Conv2D", "(None, 56, 56, 256)", 590_080),
    ("block3_conv3", "Conv2D", "(None, 56, 56, 256)", 590_080),
    ("block3_pool", "MaxPooling2D", "(None, 28, 28, 256)", 0),
    ("block4_conv1", "Conv2D", "(None, 28, 28, 512)", 1_180_160),
    ("block4_conv2", "Conv2D", "(None, 28, 28, 512)", 2_359_808),
    ("block4_conv3", "Conv2D", "(None, 28, 28, 512)", 2_359_808),
    ("block4_pool", "MaxPooling2D", "(None, 14, 14, 512)", 0),
    ("block5_conv1", "Conv2D", "(None, 14, 14, 512)", 2_359_808),
    ("block5_conv2", "Conv2D", "(None, 14, 14, 512)", 2_359_808),
    ("block5_conv3", "Conv2D", "(None, 14, 14, 512)", 2_359_808),
    ("block5_pool", "MaxPooling2D", "(None, 7, 7, 512)", 0),
    ("flatten", "Flatten", "(None, 25088)", 0),
    ("fc1", "Dense", "(None, 4096)", 102_764_544),
    ("fc2", "Dense", "(None, 4096)", 16_781_312),
    ("predictions", "Dense", "(None, 1000)", 4_097_000),
];

#[test]
fn vgg16_layers_match_keras() {
    let vgg = zoo::vgg16();
    assert_eq!(vgg.layers().len(), VGG16_ROWS.len());
    for (l, &(name, class, shape, params)) in vgg.layers().iter().zip(VGG16_ROWS) {
        assert_eq!(l.name, name);
        assert_eq!(l.kind.class_name(), class, "{name}");
        assert_eq!(l.output.to_string(), shape, "{name}");
        assert_eq!(l.param_count(), params, "{name}");
    }
    assert_eq!(vgg.param_count(), 138_357_544);
    let table = vgg.summary();
    assert!(
        table.contains("fc1 (Dense)                  (None, 4096)              102764544"),
        "{table}"
    );
    assert!(table.contains("Total params: 138,357,544\n"));
}

#[test]
fn a_head_goes_on_any_model() {
    let mut vgg = zoo::vgg16();
    vgg.add(LayerKind::dense(16, Activation::Softmax)).unwrap();
    assert_eq!(vgg.layers().last().unwrap().name, "dense_1");
    assert_eq!(vgg.param_count(), 138_373_560);
    assert!(vgg.summary().contains("Total params: 138,373,560\n"));
}

#[test]
fn dot_graph_names_every_layer_in_order() {
    let dot = zoo::simple_cnn().to_dot();
    assert!(dot.starts_with("digraph"));
    let mut last = 0;
    for l in zoo::simple_cnn().layers() {
        let at = dot
            .find(&format!("{}: {}", l.name, l.kind.class_name()))
            .unwrap();
        assert!(at >= last, "{} out of order", l.name);
        last = at;
    }
    assert_eq!(
        dot.matches("->").count(),
        zoo::simple_cnn().layers().len() - 1
    );
}

#[test]
fn forward_macs_count_convolutions_and_dense_layers() {
    // conv2d_1 32x32x32 outputs of 3x3x3, conv2d_2 16x16x64 of 3x3x32, dense 4096x128, 128x10.
    let want = 32 * 32 * 32 * 27 + 16 * 16 * 64 * 288 + 4096 * 128 + 128 * 10;
    assert_eq!(zoo::simple_cnn().forward_macs(), want);
    assert_eq!(zoo::simple_cnn().forward_macs(), 6_128_896);
}

/// Keras 3.15.1's counts (`benches/reference/keras_frozen_counts.py`: `VGG16(include_top=False,
/// weights=None, input_shape=(32, 32, 3))` with `trainable = False`, printed (14714688, 0,
/// 14714688); the tutorial's model with both Conv2D layers `trainable = False`, printed
/// (545098, 525706, 19392)).
#[test]
fn frozen_counts_match_keras() {
    let mut vgg = zoo::vgg16_base(FeatureShape::image(3, 32, 32)).unwrap();
    let names: Vec<String> = vgg.layers().iter().map(|l| l.name.clone()).collect();
    for name in &names {
        vgg.set_trainable(name, false).unwrap();
    }
    assert_eq!(vgg.param_count(), 14_714_688);
    assert_eq!(vgg.trainable_param_count(), 0);
    let table = vgg.summary();
    assert!(table.contains("Total params: 14,714,688\n"), "{table}");
    assert!(table.contains("Trainable params: 0\n"), "{table}");
    assert!(
        table.contains("Non-trainable params: 14,714,688\n"),
        "{table}"
    );
    assert_eq!(vgg.output_shape(), FeatureShape::image(512, 1, 1));

    let mut cnn = zoo::simple_cnn();
    cnn.set_trainable("conv2d_1", false).unwrap();
    cnn.set_trainable("conv2d_2", false).unwrap();
    let table = cnn.summary();
    assert!(table.contains("Total params: 545,098\n"), "{table}");
    assert!(table.contains("Trainable params: 525,706\n"), "{table}");
    assert!(table.contains("Non-trainable params: 19,392\n"), "{table}");
}
