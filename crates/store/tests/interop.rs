//! Both ways against h5py: files in Keras' layout written by Python load here and predict what
//! numpy predicts; files written here pass h5py's layout checks and numpy's forward pass.

mod common;

use candle_core::{Device, Tensor};
use simplecnn_model::{Mode, Model};
use simplecnn_store::{load_model, load_weights, save_model, MatchBy};

/// Reads `x` (N,H,W,C) and `y` from the helper's IO file; returns x as NCHW.
fn read_io(path: &std::path::Path) -> (Tensor, Vec<Vec<f32>>) {
    let f = simplecnn_store::open_h5(path).unwrap();
    let x = f.dataset("x").unwrap();
    let shape = x.shape();
    let x = Tensor::from_vec(x.read_raw::<f32>().unwrap(), shape, &Device::Cpu).unwrap();
    let y = f.dataset("y").unwrap();
    let (n, k) = (y.shape()[0], y.shape()[1]);
    let y: Vec<f32> = y.read_raw().unwrap();
    (
        x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap(),
        (0..n).map(|i| y[i * k..(i + 1) * k].to_vec()).collect(),
    )
}

/// Has the helper write a model (`--bn` adds BatchNormalization) and its IO file into `dir`;
/// returns the model's path, the input (NCHW) and numpy's predictions.
fn python_model(
    py: &str,
    dir: &std::path::Path,
    naming: &str,
    strings: &str,
    bn: bool,
) -> (std::path::PathBuf, Tensor, Vec<Vec<f32>>) {
    let stem = format!("{naming}-{strings}{}", if bn { "-bn" } else { "" });
    let model_path = dir.join(format!("{stem}.h5"));
    let io_path = dir.join(format!("{stem}-io.h5"));
    let (m, io) = (model_path.to_str().unwrap(), io_path.to_str().unwrap());
    let mut args = vec!["write", m, io, "--naming", naming, "--strings", strings];
    if bn {
        args.push("--bn");
    }
    common::run(py, &args);
    let (x, y) = read_io(&io_path);
    (model_path, x, y)
}

#[test]
fn keras_files_written_by_h5py_load_and_predict_like_numpy() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (naming, strings) in [
        ("keras2", "fixed"),
        ("keras2", "vlen"),
        ("keras3", "vlen"),
        ("keras3", "fixed"),
    ] {
        let (model_path, x, expected) = python_model(&py, dir.path(), naming, strings, false);

        let model = load_model(&model_path, &Device::Cpu).unwrap();
        let got = common::predict(&model, &x);
        let d = common::max_diff(&got, &expected);
        assert!(
            d < 1e-5,
            "{naming}/{strings}: load_model predicts {d} away from numpy"
        );

        // The same weights into a model built here, by order.
        let ours = Model::new(common::small_cnn(), &Device::Cpu, 1).unwrap();
        load_weights(&ours, &model_path, MatchBy::Order).unwrap();
        let got = common::predict(&ours, &x);
        assert!(
            common::max_diff(&got, &expected) < 1e-5,
            "{naming}/{strings}: load_weights"
        );
        if naming == "keras2" {
            // Names match only in the Keras 2 naming.
            let by_name = Model::new(common::small_cnn(), &Device::Cpu, 2).unwrap();
            load_weights(&by_name, &model_path, MatchBy::Name).unwrap();
            let got = common::predict(&by_name, &x);
            assert!(common::max_diff(&got, &expected) < 1e-5);
        } else {
            let by_name = Model::new(common::small_cnn(), &Device::Cpu, 2).unwrap();
            let err = load_weights(&by_name, &model_path, MatchBy::Name).unwrap_err();
            assert!(
                err.to_string().contains("conv2d_2: not in the file"),
                "{err}"
            );
        }
    }
}

#[test]
fn files_written_here_pass_h5py_checks_and_numpy_forward() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(common::small_cnn(), &Device::Cpu, 7).unwrap();
    // Non-zero biases, so a misplaced bias would show.
    for w in model.weights().filter(|w| w.name == "bias") {
        let n = w.var.elem_count();
        let b = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .affine(0.05, -0.1)
            .unwrap();
        model.set_weight(&w.layer, w.name, &b).unwrap();
    }
    let model_path = dir.path().join("ours.h5");
    save_model(&model, &model_path, None).unwrap();

    let x = Tensor::rand(0f32, 1f32, (3, 3, 8, 8), &Device::Cpu).unwrap();
    let y = model.forward(&x, Mode::Inference).unwrap();
    let io_path = dir.path().join("io.h5");
    {
        let f = simplecnn_store::create_h5(&io_path).unwrap();
        let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let data: Vec<f32> = nhwc.flatten_all().unwrap().to_vec1().unwrap();
        f.new_dataset::<f32>()
            .shape(nhwc.dims())
            .create("x")
            .unwrap()
            .write_raw(&data)
            .unwrap();
        let data: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        f.new_dataset::<f32>()
            .shape(y.dims())
            .create("y")
            .unwrap()
            .write_raw(&data)
            .unwrap();
    }
    let out = common::run(
        &py,
        &[
            "check",
            model_path.to_str().unwrap(),
            io_path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("ok:"), "{out}");
}

/// A file Keras 3.15 itself wrote (`model.save('….h5')`, see tests/data/make_keras_fixture.py):
/// the tutorial's network loads and predicts what Keras predicted.
#[test]
fn a_file_keras_wrote_predicts_what_keras_predicted() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let model = load_model(&data.join("keras3-simplecnn.h5"), &Device::Cpu).unwrap();
    assert_eq!(model.spec().param_count(), 545_098);
    let (x, expected) = read_io(&data.join("keras3-simplecnn-io.h5"));
    let got = common::predict(&model, &x);
    let d = common::max_diff(&got, &expected);
    assert!(d < 1e-5, "differs from Keras by {d}");
}

/// BatchNormalization (inference) in both namings: gamma, beta and the moving statistics load
/// into place and the model predicts what numpy predicts.
#[test]
fn batch_normalization_loads_and_predicts_like_numpy() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (naming, strings) in [("keras2", "fixed"), ("keras3", "vlen")] {
        let (model_path, x, expected) = python_model(&py, dir.path(), naming, strings, true);
        let model = load_model(&model_path, &Device::Cpu).unwrap();
        assert_eq!(
            model.spec().layers()[1].kind.class_name(),
            "BatchNormalization"
        );
        // 4 channels: gamma and beta trainable, the moving statistics not.
        assert_eq!(
            model.spec().param_count() - model.spec().trainable_param_count(),
            8
        );
        let got = common::predict(&model, &x);
        let d = common::max_diff(&got, &expected);
        assert!(d < 1e-5, "{naming}: differs from numpy by {d}");

        // Saved again by us, it loads back to the same predictions.
        let again = dir.path().join(format!("bn-{naming}-ours.h5"));
        save_model(&model, &again, None).unwrap();
        let back = load_model(&again, &Device::Cpu).unwrap();
        let got2 = common::predict(&back, &x);
        assert_eq!(got, got2);
    }
}
