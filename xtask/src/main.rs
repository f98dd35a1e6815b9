//! `cargo xtask`: the entry point that works on a fresh machine.
//!
//! The real commands live in `crates/cli` (the `simplecnn` binary), which links the HDF5 C
//! library through `hdf5-metno-sys`; that build fails outright without the library. So this
//! small, dependency-free program first makes sure the system has what the build needs —
//! installing Debian's `libhdf5-dev` when it runs as root, or stopping with the exact command
//! otherwise — then hands over:
//!
//! * `cargo xtask setup` → only the installs above (and the test venv);
//! * `cargo xtask test [ARGS]` → sets up `target/py-venv` (Pillow, h5py, numpy for the
//!   shared-data and interop tests) and runs `cargo test --workspace --release [ARGS]`;
//! * `cargo xtask bench --reference …` → also sets up `target/reference-venv/{keras,torch}`
//!   (pip, only when asked) for the reference scripts in `benches/reference/`;
//! * `cargo xtask ANYTHING…` → `cargo run --release -p simplecnn-cli -- ANYTHING…`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const HDF5_PACKAGES: &[&str] = &["libhdf5-dev", "pkg-config"];
const PYTHON_PACKAGES: &[&str] = &["pillow", "h5py", "numpy"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn hdf5_present() -> bool {
    succeeds(Command::new("pkg-config").args(["--exists", "hdf5"]))
        || Path::new("/usr/include/hdf5/serial/hdf5.h").is_file()
        || std::env::var_os("HDF5_DIR").is_some()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn ensure_hdf5() {
    if hdf5_present() {
        return;
    }
    let install = format!("apt-get install -y {}", HDF5_PACKAGES.join(" "));
    if !(is_root() && Path::new("/usr/bin/apt-get").is_file()) {
        eprintln!(
            "The HDF5 C library is needed to build simplecnn (model files in Keras' .h5 layout)."
        );
        eprintln!("Install it, then run this command again:\n\n    sudo apt-get update && sudo {install}\n");
        eprintln!("(elsewhere: your system's HDF5 development package, or set HDF5_DIR)");
        exit(1);
    }
    eprintln!(
        "xtask: installing {} (HDF5 C library) with apt-get",
        HDF5_PACKAGES.join(", ")
    );
    let ok = succeeds(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    ) && Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(HDF5_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !hdf5_present() {
        eprintln!("xtask: `{install}` failed; install the HDF5 development package by hand");
        exit(1);
    }
}

/// A virtualenv at `venv` in which `probe` (a Python import line) succeeds, made with pip and
/// `packages` when it does not yet.
fn ensure_venv(venv: &Path, probe: &str, packages: &[&str]) -> PathBuf {
    let python = venv.join("bin/python");
    if succeeds(Command::new(&python).args(["-c", probe])) {
        return venv.to_path_buf();
    }
    eprintln!(
        "xtask: creating {} with {}",
        venv.display(),
        packages.join(", ")
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask: could not set up {} (python3 with venv and pip is needed)",
            venv.display()
        );
        exit(1);
    }
    venv.to_path_buf()
}

/// `target/py-venv` with the Python packages the interop and shared-data tests use.
fn ensure_python_venv(root: &Path) -> PathBuf {
    ensure_venv(
        &root.join("target/py-venv"),
        "import PIL, h5py, numpy",
        PYTHON_PACKAGES,
    )
}

/// The reference frameworks' virtualenvs, made only for `bench --reference`: TensorFlow is
/// ~600 MB, PyTorch (whose Linux wheels bring CUDA libraries) ~5 GB.
fn ensure_reference_venvs(root: &Path) -> [(&'static str, PathBuf); 2] {
    let dir = root.join("target/reference-venv");
    [
        (
            "--python-keras",
            ensure_venv(
                &dir.join("keras"),
                "import keras, tensorflow, numpy",
                &["tensorflow-cpu", "keras", "numpy"],
            ),
        ),
        (
            "--python-torch",
            ensure_venv(
                &dir.join("torch"),
                "import torch, numpy",
                &["torch", "numpy"],
            ),
        ),
    ]
}

fn run(cmd: &mut Command) -> ! {
    match cmd.status() {
        Ok(s) => exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: cannot run {cmd:?}: {e}");
            exit(1)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    ensure_hdf5();
    if args.first().map(String::as_str) == Some("setup") {
        let venv = ensure_python_venv(&root);
        println!("xtask: HDF5 found; test venv ready at {}", venv.display());
        return;
    }
    if args.first().map(String::as_str) == Some("test") {
        let venv = ensure_python_venv(&root);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        run(Command::new(cargo())
            .current_dir(&root)
            .args(["test", "--workspace", "--release"])
            .args(&args[1..])
            .env("PATH", std::env::join_paths(paths).expect("valid PATH"))
            .env("SIMPLECNN_PYTHON", venv.join("bin/python")));
    }
    let mut cli = Command::new(cargo());
    cli.args(["run", "--quiet", "--release", "-p", "simplecnn-cli", "--"])
        .args(&args);
    if args.first().map(String::as_str) == Some("bench") && args.iter().any(|a| a == "--reference")
    {
        for (flag, venv) in ensure_reference_venvs(&root) {
            if !args.iter().any(|a| a == flag) {
                cli.arg(flag).arg(venv.join("bin/python"));
            }
        }
        cli.arg("--scripts").arg(root.join("benches/reference"));
    }
    run(&mut cli);
}
