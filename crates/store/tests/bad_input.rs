//! Every kind of bad file gives an error naming the file (and layer), never a panic.

mod common;

use candle_core::Device;
use simplecnn_model::{zoo, Model};
use simplecnn_store::{load_model, load_weights, save_model, MatchBy};

fn saved(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("good.h5");
    save_model(
        &Model::new(common::small_cnn(), &Device::Cpu, 1).unwrap(),
        &path,
        None,
    )
    .unwrap();
    path
}

fn err_of(r: simplecnn_store::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn missing_and_non_hdf5_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_of(load_model(&dir.path().join("nope.h5"), &Device::Cpu));
    assert!(e.contains("nope.h5") && e.contains("no such file"), "{e}");
    let text = dir.path().join("text.h5");
    std::fs::write(&text, "not hdf5 at all").unwrap();
    let e = err_of(load_model(&text, &Device::Cpu));
    assert!(e.contains("text.h5") && e.contains("HDF5"), "{e}");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.h5");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(load_model(&cut, &Device::Cpu));
    assert!(e.contains("cut.h5"), "{e}");
}

#[test]
fn wrong_shapes_and_counts_name_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved(dir.path());
    // SimpleCNN has the same number of weighted layers but other shapes.
    let other = Model::new(zoo::simple_cnn(), &Device::Cpu, 1).unwrap();
    let e = err_of(load_weights(&other, &good, MatchBy::Order));
    assert!(
        e.contains("good.h5") && e.contains("conv2d_1") && e.contains("shape"),
        "{e}"
    );
    let e = err_of(load_weights(&other, &good, MatchBy::Name));
    assert!(e.contains("shape"), "{e}");
}

#[test]
fn missing_dataset_and_unsupported_layer() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved(dir.path());
    {
        let f = simplecnn_store::open_h5_rw(&good).unwrap();
        f.unlink("model_weights/dense_1/dense_1/bias:0").unwrap();
    }
    let e = err_of(load_model(&good, &Device::Cpu));
    assert!(
        e.contains("dense_1") && e.contains("bias:0") && e.contains("missing"),
        "{e}"
    );

    let path = dir.path().join("lstm.h5");
    {
        let f = simplecnn_store::create_h5(&path).unwrap();
        let cfg = r#"{"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 8, 8, 3], "name": "in"}},
            {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 4}}]}}"#;
        let v: hdf5::types::VarLenUnicode = cfg.parse().unwrap();
        f.new_attr::<hdf5::types::VarLenUnicode>()
            .shape(())
            .create("model_config")
            .unwrap()
            .write_scalar(&v)
            .unwrap();
    }
    let e = err_of(load_model(&path, &Device::Cpu));
    assert!(
        e.contains("lstm.h5") && e.contains("lstm_1") && e.contains("LSTM"),
        "{e}"
    );
}

#[test]
fn a_failed_save_leaves_the_old_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved(dir.path());
    let before = std::fs::read(&good).unwrap();
    // A model whose layer name cannot be written as ASCII makes the save fail midway.
    let mut spec = simplecnn_model::Network::new("s", simplecnn_model::FeatureShape::Flat(4));
    spec.add_named(
        "dénse",
        simplecnn_model::LayerKind::dense(2, simplecnn_model::Activation::Linear),
    )
    .unwrap();
    let bad = Model::new(spec, &Device::Cpu, 0).unwrap();
    assert!(save_model(&bad, &good, None).is_err());
    assert_eq!(std::fs::read(&good).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

/// Links that loop, groups nested deeper than anyone writes, and links to other files: `inspect`
/// ends with a bounded answer, `load_model` refuses to follow a link out of the file.
#[test]
fn inspect_and_load_stop_at_cycles_depth_and_external_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved(dir.path());
    let other = dir.path().join("other.h5");
    simplecnn_store::create_h5(&other)
        .unwrap()
        .create_group("secret")
        .unwrap();
    {
        let f = simplecnn_store::open_h5_rw(&path).unwrap();
        let g = f.create_group("loops").unwrap();
        g.link_hard("/loops", "back_to_me").unwrap();
        g.link_soft("/loops", "soft_back").unwrap();
        g.link_external(other.to_str().unwrap(), "/secret", "elsewhere")
            .unwrap();
    }
    let tree = simplecnn_store::inspect(&path).unwrap();
    assert!(
        tree.contains("back_to_me/  (a link back to a group above)"),
        "{tree}"
    );
    assert!(
        tree.contains("soft_back/  (a link back to a group above)"),
        "{tree}"
    );
    assert!(
        tree.contains("elsewhere  (external link, not followed)"),
        "{tree}"
    );

    let deep = dir.path().join("deep.h5");
    {
        let f = simplecnn_store::create_h5(&deep).unwrap();
        let mut g = f.create_group("d").unwrap();
        for _ in 0..100 {
            g = g.create_group("d").unwrap();
        }
    }
    let e = err_of(simplecnn_store::inspect(&deep));
    assert!(
        e.contains("deep.h5") && e.contains("nest more than 64 deep"),
        "{e}"
    );

    // A layer's weights that live in another file are not read from it.
    {
        let f = simplecnn_store::open_h5_rw(&path).unwrap();
        let w = f.group("model_weights").unwrap();
        let name = w
            .member_names()
            .unwrap()
            .into_iter()
            .find(|n| n.starts_with("conv2d"))
            .unwrap();
        let g = w.group(&name).unwrap();
        let inner = g.group(&name).unwrap();
        inner.unlink("kernel:0").unwrap();
        inner
            .link_external(other.to_str().unwrap(), "/secret", "kernel:0")
            .unwrap();
    }
    let e = err_of(load_model(&path, &Device::Cpu));
    assert!(
        e.contains("good.h5") && e.contains("link to another file"),
        "{e}"
    );
}
