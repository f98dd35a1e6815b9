//! Keras 2's `save_weights` layout, as the Keras applications' VGG-16 file has it
//! (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`): at the root, `layer_names` (fixed-
//! length byte strings, every layer including the input and the pools); per layer a group with
//! `weight_names` and the datasets `block1_conv1_W_1:0` (kernel, `(kh, kw, in, out)`) and
//! `block1_conv1_b_1:0` directly inside it. Loaded by position, as Keras' legacy loader does.

use candle_core::Device;
use hdf5::types::FixedAscii;
use simplecnn_model::{zoo, FeatureShape, Model};
use simplecnn_store::{load_layer_weights, MatchBy};

fn names_attr(loc: &hdf5::Location, name: &str, values: &[String]) {
    let v: Vec<FixedAscii<32>> = values
        .iter()
        .map(|s| FixedAscii::from_ascii(s.as_bytes()).unwrap())
        .collect();
    if v.is_empty() {
        // Keras writes an empty float array for a layer without weights.
        loc.new_attr::<f64>().shape([0]).create(name).unwrap();
        return;
    }
    loc.new_attr::<FixedAscii<32>>()
        .shape([v.len()])
        .create(name)
        .unwrap()
        .write_raw(&v)
        .unwrap();
}

/// The value the file holds at kernel index `i` of the layer numbered `layer`.
fn kernel_value(layer: usize, i: usize) -> f32 {
    layer as f32 + (i % 97) as f32 * 1e-3
}

#[test]
fn vgg16_notop_weights_load_by_position_into_the_zoo_base() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp
        .path()
        .join("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5");
    let base = zoo::vgg16_base(FeatureShape::image(3, 32, 32)).unwrap();
    {
        let f = simplecnn_store::create_h5(&path).unwrap();
        let names: Vec<String> = base.layers().iter().map(|l| l.name.clone()).collect();
        names_attr(&f, "layer_names", &names);
        let mut conv = 0;
        for l in base.layers() {
            let g = f.create_group(&l.name).unwrap();
            if l.param_count() == 0 {
                names_attr(&g, "weight_names", &[]);
                continue;
            }
            conv += 1;
            let (w, b) = (format!("{}_W_1:0", l.name), format!("{}_b_1:0", l.name));
            names_attr(&g, "weight_names", &[w.clone(), b.clone()]);
            let (cin, cout) = (l.input.channels(), l.output.channels());
            let kernel: Vec<f32> = (0..9 * cin * cout).map(|i| kernel_value(conv, i)).collect();
            g.new_dataset::<f32>()
                .shape([3, 3, cin, cout])
                .create(w.as_str())
                .unwrap()
                .write_raw(&kernel)
                .unwrap();
            let bias: Vec<f32> = (0..cout)
                .map(|o| -(conv as f32) - o as f32 * 1e-4)
                .collect();
            g.new_dataset::<f32>()
                .shape([cout])
                .create(b.as_str())
                .unwrap()
                .write_raw(&bias)
                .unwrap();
        }
        assert_eq!(conv, 13);
    }
    let model = Model::new(base, &Device::Cpu, 0).unwrap();
    let convs: Vec<String> = model
        .spec()
        .layers()
        .iter()
        .filter(|l| l.param_count() > 0)
        .map(|l| l.name.clone())
        .collect();
    load_layer_weights(&model, &path, &convs, MatchBy::Order).unwrap();
    // Our kernels are (out, in, kh, kw): [o][i][y][x] is the file's [y][x][i][o].
    for (n, name) in convs.iter().enumerate() {
        let kernel = model
            .weight(name, "kernel")
            .unwrap()
            .var
            .as_tensor()
            .clone();
        let (cout, cin, _, _) = kernel.dims4().unwrap();
        let ours: Vec<f32> = kernel.flatten_all().unwrap().to_vec1().unwrap();
        for (o, i, y, x) in [
            (0, 0, 0, 0),
            (cout - 1, cin - 1, 2, 1),
            (cout / 2, cin / 3, 1, 2),
        ] {
            let file_index = ((y * 3 + x) * cin + i) * cout + o;
            let our_index = ((o * cin + i) * 3 + y) * 3 + x;
            assert_eq!(
                ours[our_index],
                kernel_value(n + 1, file_index),
                "{name} [{o},{i},{y},{x}]"
            );
        }
        let bias: Vec<f32> = model
            .weight(name, "bias")
            .unwrap()
            .var
            .as_tensor()
            .to_vec1()
            .unwrap();
        assert_eq!(bias[cout - 1], -((n + 1) as f32) - (cout - 1) as f32 * 1e-4);
    }
    // A base cut after block 2 takes the file's first four layers with weights.
    let cut = Model::new(
        zoo::vgg16_base(FeatureShape::image(3, 32, 32)).unwrap(),
        &Device::Cpu,
        1,
    )
    .unwrap();
    load_layer_weights(&cut, &path, &convs[..4], MatchBy::Order).unwrap();
    // A model with more weighted layers than the file is refused, naming the file.
    let too_many: Vec<String> = convs.iter().chain(convs.iter()).cloned().collect();
    let err = load_layer_weights(&model, &path, &too_many, MatchBy::Order).unwrap_err();
    assert!(
        err.to_string().contains("notop.h5") && err.to_string().contains("13 layers"),
        "{err}"
    );
}
