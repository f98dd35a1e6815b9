//! Crafted files and arguments against the release CLI, under a memory limit: each one ends in
//! a one-line error naming the file (exit status 1), never a panic, an abort or an allocation
//! of what the file claims.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use simplecnn_model::{zoo, Model};

mod common;
use common::tiny_folders_of;

/// Runs the CLI with its address space limited to 3 GiB (`ulimit -v`), so an allocation of
/// what a crafted file claims fails the test instead of succeeding on a large machine, and
/// its time to 120 s, so a read that blocks fails the test (status 124) instead of hanging it.
fn limited(args: &[&str]) -> Output {
    limited_in(Path::new("."), args)
}

/// [`limited`] in the folder `dir`.
fn limited_in(dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .current_dir(dir)
        .arg("-c")
        .arg("ulimit -v 3145728 && exec timeout 120 \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_simplecnn"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        // The files were just written by this test process, whose HDF5 library may still hold
        // their lock for a moment (other tests use HDF5 in it at the same time); the CLI only
        // reads them.
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .env_remove("CIFAR10_DIR")
        .output()
        .unwrap()
}

/// A clean failure: status 1, one `error:` line naming `names`, no panic or backtrace.
fn assert_clean_error(o: &Output, names: &str, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "status {:?}: {err}", o.status);
    assert!(
        !err.contains("panicked") && !err.contains("Stack backtrace"),
        "{err}"
    );
    assert!(
        err.contains(names) && err.contains(says),
        "wanted {names:?} and {says:?}: {err}"
    );
}

/// The HDF5 work these tests do in their own process, one test at a time and without file
/// locks: the tests run in parallel threads of one process, and a file one of them just wrote
/// was seen still locked ("unable to lock file") when it was reopened at once.
fn hdf5_here() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
    guard
}

fn drop_after<T>(guard: std::sync::MutexGuard<'static, ()>, f: impl FnOnce() -> T) -> T {
    let out = f();
    drop(guard);
    out
}

/// A saved SimpleCNN whose `model_config` is edited by `edit`.
fn crafted_model(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let _hdf5 = hdf5_here();
    let path = dir.join(name);
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 0).unwrap();
    simplecnn_store::save_model(&model, &path, None).unwrap();
    let mut config = simplecnn_store::read_model_config(&path).unwrap();
    edit(&mut config);
    let file = simplecnn_store::open_h5_rw(&path).unwrap();
    file.delete_attr("model_config").unwrap();
    let text: hdf5::types::VarLenUnicode = config.to_string().parse().unwrap();
    file.new_attr::<hdf5::types::VarLenUnicode>()
        .shape(())
        .create("model_config")
        .unwrap()
        .write_scalar(&text)
        .unwrap();
    path.display().to_string()
}

fn layer(config: &mut serde_json::Value, name: &str) -> serde_json::Value {
    config["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["config"]["name"] == name)
        .cloned()
        .unwrap()
}

fn set(config: &mut serde_json::Value, name: &str, key: &str, value: serde_json::Value) {
    for l in config["config"]["layers"].as_array_mut().unwrap() {
        if l["config"]["name"] == name {
            l["config"][key] = value.clone();
        }
    }
}

#[test]
fn sizes_in_a_model_config_are_checked_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("no-data");
    for (file, edit, says) in [
        (
            "units.h5",
            Box::new(|c: &mut serde_json::Value| {
                set(c, "dense_1", "units", serde_json::json!(16_000_000))
            }) as Box<dyn FnOnce(&mut serde_json::Value)>,
            "over the limit of 268435456 values",
        ),
        (
            "huge-units.h5",
            Box::new(|c: &mut serde_json::Value| {
                set(c, "dense_1", "units", serde_json::json!(1u64 << 60))
            }),
            "units 1152921504606846976 is not a whole number from 1 to 16777216",
        ),
        (
            "filters.h5",
            Box::new(|c: &mut serde_json::Value| {
                set(c, "conv2d_2", "filters", serde_json::json!(16_000_000))
            }),
            "over the limit",
        ),
        (
            "negative-strides.h5",
            Box::new(|c: &mut serde_json::Value| {
                set(c, "conv2d_1", "strides", serde_json::json!([-1, -1]))
            }),
            "strides -1 is not a whole number",
        ),
        (
            "zero-strides.h5",
            Box::new(|c: &mut serde_json::Value| {
                set(c, "conv2d_1", "strides", serde_json::json!([0, 0]))
            }),
            "strides 0 is not a whole number",
        ),
        (
            "input.h5",
            Box::new(|c: &mut serde_json::Value| {
                let first = layer(c, "conv2d_1");
                let key = if first["config"].get("batch_input_shape").is_some() {
                    "batch_input_shape"
                } else {
                    "batch_shape"
                };
                set(
                    c,
                    "conv2d_1",
                    key,
                    serde_json::json!([null, 60000, 60000, 3]),
                );
                for l in c["config"]["layers"].as_array_mut().unwrap() {
                    if l["class_name"] == "InputLayer" {
                        l["config"]["batch_input_shape"] =
                            serde_json::json!([null, 60000, 60000, 3]);
                        l["config"]["batch_shape"] = serde_json::json!([null, 60000, 60000, 3]);
                    }
                }
            }),
            "over the limit",
        ),
    ] {
        let path = crafted_model(tmp.path(), file, edit);
        let o = limited(&[
            "evaluate",
            "--model",
            &path,
            "--data",
            data.to_str().unwrap(),
        ]);
        assert_clean_error(&o, file, says);
    }
}

#[test]
fn weights_must_be_floats_of_the_size_the_model_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("int-kernel.h5");
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 0).unwrap();
    let hdf5 = hdf5_here();
    simplecnn_store::save_model(&model, &path, None).unwrap();
    {
        let file = simplecnn_store::open_h5_rw(&path).unwrap();
        let g = file.group("model_weights/conv2d_1/conv2d_1").unwrap();
        g.unlink("kernel:0").unwrap();
        g.new_dataset::<i32>()
            .shape([3, 3, 3, 32])
            .create("kernel:0")
            .unwrap()
            .write_raw(&vec![1i32; 3 * 3 * 3 * 32])
            .unwrap();
    }
    drop(hdf5);
    let o = limited(&["evaluate", "--model", path.to_str().unwrap()]);
    assert_clean_error(&o, "int-kernel.h5", "not floating-point weights");
}

#[test]
fn files_that_are_not_files_say_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let dangling = tmp.path().join("dangling.h5");
    std::os::unix::fs::symlink(tmp.path().join("gone.h5"), &dangling).unwrap();
    for (path, says) in [
        (tmp.path().to_path_buf(), "a folder, not a model file"),
        (dangling, "a symbolic link to nothing"),
        (Path::new("/dev/zero").to_path_buf(), "not a regular file"),
        (tmp.path().join("missing.h5"), "no such file"),
    ] {
        let o = limited(&["evaluate", "--model", path.to_str().unwrap()]);
        assert_clean_error(&o, &path.display().to_string(), says);
    }
}

/// A 4 GB sparse file where a batch should be: refused from its size, before it is read.
#[test]
fn a_huge_batch_file_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for f in simplecnn_cifar::binary::TRAIN_FILES {
        let file = std::fs::File::create(dir.join(f)).unwrap();
        file.set_len(4_000_000_000).unwrap();
    }
    std::fs::File::create(dir.join("test_batch.bin"))
        .unwrap()
        .set_len(4_000_000_000)
        .unwrap();
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 0).unwrap();
    let m = tmp.path().join("m.h5");
    drop_after(hdf5_here(), || {
        simplecnn_store::save_model(&model, &m, None).unwrap()
    });
    let o = limited(&[
        "evaluate",
        "--model",
        m.to_str().unwrap(),
        "--data",
        tmp.path().to_str().unwrap(),
    ]);
    assert_clean_error(&o, "_batch", "4000000000 bytes");
}

#[test]
fn show_bounds_its_sizes() {
    for args in [
        ["show", "--scale", "100000"],
        ["show", "--per-class", "99999999"],
    ] {
        let o = limited(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "clap's usage error: {err}");
        assert!(err.contains("not in 1..="), "{err}");
    }
}

/// A folder where `latest` goes: the run finishes, and the error names both.
#[test]
fn a_folder_named_latest_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_folders_of(&tmp.path().join("data"), &simplecnn_cifar::CLASS_NAMES, 2);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("latest")).unwrap();
    let o = limited(&[
        "experiment",
        "baseline",
        "--data",
        tmp.path().join("data").to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "latest: a folder", "the run is complete in");
    let runs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("test.json").is_file())
        .collect();
    assert_eq!(runs.len(), 1, "the run itself finished");
}

fn mkfifo(path: &Path) {
    let o = Command::new("mkfifo").arg(path).output().unwrap();
    assert!(o.status.success());
}

/// FIFOs (which a plain open waits on for a writer, forever) and devices named as a model, a
/// base, an experiment or an image: refused by what they are, at once.
#[test]
fn fifos_and_devices_named_as_files_are_refused_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for name in ["fifo.h5", "fifo.keras", "fifo.toml", "fifo.png"] {
        mkfifo(&dir.join(name));
    }
    let model = dir.join("m.h5");
    drop_after(hdf5_here(), || {
        let m = Model::new(zoo::simple_cnn(), &Device::Cpu, 0).unwrap();
        simplecnn_store::save_model(&m, &model, None).unwrap()
    });
    let s = |p: &str| dir.join(p).display().to_string();
    let base_toml = dir.join("base.toml");
    std::fs::write(
        &base_toml,
        format!(
            "name = \"b\"\n[model]\nbase = {{ file = {:?}, until = \"flatten_1\" }}\n\
             layers = [{{ class_name = \"Dense\", units = 10, activation = \"softmax\" }}]\n\
             [optimizer]\nkind = \"adam\"\n[fit]\nepochs = 1\nbatch_size = 4\n",
            s("fifo.h5")
        ),
    )
    .unwrap();
    let data = dir.join("data");
    tiny_folders_of(&data, &simplecnn_cifar::CLASS_NAMES, 1);
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec!["evaluate".into(), "--model".into(), s("fifo.h5")],
            s("fifo.h5"),
            "a FIFO (named pipe), not a regular file",
        ),
        (
            vec!["evaluate".into(), "--model".into(), s("fifo.keras")],
            s("fifo.keras"),
            "a FIFO",
        ),
        (
            vec!["summary".into(), s("fifo.keras")],
            s("fifo.keras"),
            "a FIFO",
        ),
        (vec!["summary".into(), s("fifo.h5")], s("fifo.h5"), "a FIFO"),
        (
            vec!["predict".into(), "--model".into(), s("fifo.h5"), s("m.h5")],
            s("fifo.h5"),
            "a FIFO",
        ),
        (
            vec!["predict".into(), "--model".into(), s("m.h5"), s("fifo.png")],
            s("fifo.png"),
            "not a regular file",
        ),
        (
            vec!["experiment".into(), s("fifo.toml")],
            s("fifo.toml"),
            "a FIFO",
        ),
        (
            vec![
                "experiment".into(),
                base_toml.display().to_string(),
                "--data".into(),
                data.display().to_string(),
            ],
            s("fifo.h5"),
            "a FIFO",
        ),
        (
            vec!["evaluate".into(), "--model".into(), "/dev/zero".into()],
            "/dev/zero".into(),
            "a character device, not a regular file",
        ),
    ];
    for (args, names, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let o = limited(&args);
        assert_clean_error(&o, &names, says);
        assert!(started.elapsed().as_secs() < 60, "{args:?} took too long");
    }
}

/// An experiment's name, or its outputs.dir, written to climb out of the results folder: refused
/// naming the key, and nothing is written outside.
#[test]
fn names_from_a_file_cannot_write_outside_the_chosen_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let baseline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/baseline.toml"
    ))
    .unwrap();
    let cases = [
        (
            baseline.replace("name = \"baseline\"", "name = \"../../escaped\""),
            "name: \"../../escaped\" must be a plain name",
        ),
        (
            baseline.replace("# dir = \"results/baseline\"", "dir = \"../escaped\""),
            "outputs.dir: \"../escaped\" is outside the folder this runs in",
        ),
        (
            baseline.replace(
                "# dir = \"results/baseline\"",
                "dir = \"/tmp/escaped-simplecnn\"",
            ),
            "outputs.dir: \"/tmp/escaped-simplecnn\" is outside",
        ),
    ];
    for (text, says) in cases {
        std::fs::write(work.join("shared.toml"), &text).unwrap();
        let o = limited_in(&work, &["experiment", "shared.toml", "--epochs", "1"]);
        assert_clean_error(&o, "shared.toml", says);
    }
    assert!(!tmp.path().join("escaped").exists());
    assert!(!Path::new("/tmp/escaped-simplecnn").exists());
    assert!(!work.join("results").exists());
}

/// Where the model names its classes, evaluate's data must name the same ones: a renamed class
/// folder is an error listing both; the same names in another order are matched by name.
#[test]
fn evaluate_refuses_data_whose_class_names_differ_from_the_model_s() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = simplecnn_cifar::CLASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut reversed = names.clone();
    reversed.reverse();
    let model = Model::new(zoo::simple_cnn(), &Device::Cpu, 0).unwrap();
    let (plain, backwards) = (tmp.path().join("plain.h5"), tmp.path().join("reversed.h5"));
    drop_after(hdf5_here(), || {
        for (path, names) in [(&plain, &names), (&backwards, &reversed)] {
            let options = simplecnn_store::SaveOptions {
                optimizer: None,
                class_names: Some(names),
            };
            simplecnn_store::save_model_with(&model, path, &options).unwrap();
        }
    });
    let mut renamed: Vec<&str> = simplecnn_cifar::CLASS_NAMES.to_vec();
    renamed[3] = "kitten";
    let (good, bad) = (tmp.path().join("good"), tmp.path().join("bad"));
    tiny_folders_of(&good, &simplecnn_cifar::CLASS_NAMES, 2);
    tiny_folders_of(&bad, &renamed, 2);
    let evaluate = |model: &Path, data: &Path| {
        limited(&[
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            tmp.path().join("pictures").to_str().unwrap(),
        ])
    };
    let o = evaluate(&plain, &bad);
    assert_clean_error(&o, "plain.h5", "the model's classes are not the data's");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kitten") && err.contains("cat,"), "{err}");
    for model in [&plain, &backwards] {
        let o = evaluate(model, &good);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Matched by name: the model's first output is "truck", and its row comes first.
    let o = evaluate(&backwards, &good);
    let report = String::from_utf8_lossy(&o.stdout);
    let first_class = report.lines().nth(1).unwrap_or_default().trim().to_string();
    assert!(first_class.starts_with("truck"), "{report}");
}

/// Weights each within the per-tensor limit that together are more than the process may use:
/// refused before they are allocated, with how much is needed and how much there is, for a
/// model file and for a run.
#[test]
fn a_model_too_big_for_memory_is_refused_before_it_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    // SimpleCNN with four more ~1 GiB Dense layers (each under the 2^28-value limit).
    let path = crafted_model(tmp.path(), "huge.h5", |c| {
        let dense = layer(c, "dense_1");
        let layers = c["config"]["layers"].as_array_mut().unwrap();
        let at = layers
            .iter()
            .position(|l| l["config"]["name"] == "dense_1")
            .unwrap();
        for (i, units) in [60_000, 4096, 60_000, 4096].into_iter().enumerate() {
            let mut extra = dense.clone();
            extra["config"]["name"] = serde_json::json!(format!("huge_{i}"));
            extra["config"]["units"] = serde_json::json!(units);
            layers.insert(at + 1 + i, extra);
        }
    });
    let o = limited(&["evaluate", "--model", &path]);
    assert_clean_error(&o, "huge.h5", "needs about");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("this process may use (ulimit -v"), "{err}");

    let data = tmp.path().join("data");
    tiny_folders_of(&data, &simplecnn_cifar::CLASS_NAMES, 1);
    let experiment = tmp.path().join("huge.toml");
    std::fs::write(
        &experiment,
        "name = \"huge\"\n[model]\ninput = [32, 32, 3]\nlayers = [\n\
         { class_name = \"Flatten\" },\n\
         { class_name = \"Dense\", units = 60000 },\n{ class_name = \"Dense\", units = 4096 },\n\
         { class_name = \"Dense\", units = 60000 },\n\
         { class_name = \"Dense\", units = 10, activation = \"softmax\" },\n]\n\
         [optimizer]\nkind = \"adam\"\n[fit]\nepochs = 1\nbatch_size = 4\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = limited(&[
        "experiment",
        experiment.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "experiment \"huge\" needs about", "optimizer slots");
    assert!(!out.exists(), "refused before the run folder is made");
}
