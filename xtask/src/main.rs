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
//!   shared-data and interop tests) and Open MPI (as root), and runs `cargo test --workspace
//!   --release [--features simplecnn-cli/mpi] [ARGS]`;
//! * `cargo xtask tensorboard [DIR]` → the real TensorBoard (from `target/py-venv`) on
//!   localhost over `DIR` (default `results/`), printing its address;
//! * `cargo xtask slurm-up` → a one-node Slurm on this machine (`xtask/scripts/slurm-up.sh`:
//!   Debian's slurm-wlm and munge, as root), for `simplecnn sweep --submit` and CI's Slurm test;
//! * `cargo xtask bench --reference …` → also sets up `target/reference-venv/{keras,torch}`
//!   (pip, only when asked) for the reference scripts in `benches/reference/`;
//! * `cargo xtask setup --cuda` → also CUDA 13.0's compiler, headers and libraries (and cuDNN
//!   9, NCCL 2.30) from PyPI's NVIDIA wheels (`target/cuda-venv`), arranged as a CUDA home in
//!   `target/cuda-home`;
//! * `cargo xtask cuda CARGO_ARGS…` → cargo with that CUDA home (`CUDA_COMPUTE_CAP=90`, the
//!   H200's; target dir `target/cuda`), e.g. `cargo xtask cuda clippy --features cuda`;
//! * `cargo xtask gpu-pack` → two stripped CUDA builds of `simplecnn` (candle's convolutions
//!   and cuDNN's), the libraries they link that a CUDA image lacks, the commit and the JPEG
//!   CIFAR-10 for `benches/gpu/run.sh`, in `target/gpu-pack`;
//! * `cargo xtask ANYTHING…` → `cargo run --release -p simplecnn-cli -- ANYTHING…`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const HDF5_PACKAGES: &[&str] = &["libhdf5-dev", "pkg-config"];
/// Open MPI (Debian's default MPI; its `mpirun` ends the whole job when a rank dies) with its
/// development files, and libclang for rsmpi's bindings: the `mpi` feature's build needs them.
const MPI_PACKAGES: &[&str] = &["openmpi-bin", "libopenmpi-dev", "libclang-dev"];
/// The test venv: the shared data's converter (Pillow), the interop tests (h5py, numpy), the
/// real TensorBoard (its reader checks our event files; `xtask tensorboard` serves them) and
/// ONNX's checker and runtime (they check and run what `export` writes).
const PYTHON_PACKAGES: &[&str] = &[
    "pillow",
    "h5py",
    "numpy",
    "tensorboard",
    "onnx",
    "onnxruntime",
];
/// CUDA 13.0, the GPU machine's (driver 580 loads PTX from nvcc up to 13.0, not newer).
const CUDA_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-nvrtc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cublas==13.0.*",
    "nvidia-curand==10.4.0.*",
    // cuDNN 9 (the `cudnn` feature links libcudnn.so.9; the GPU image's PyTorch brings its own).
    "nvidia-cudnn-cu13==9.13.*",
    // NCCL 2.30 (the `nccl` feature of simplecnn-collective links libnccl.so.2; cudarc's
    // bindings are NCCL 2.30's).
    "nvidia-nccl-cu13==2.30.*",
];
/// The libraries candle's CUDA backend links, by the names the wheels give them.
const CUDA_LIBRARIES: &[(&str, &str)] = &[
    ("libcublas.so", "libcublas.so.13"),
    ("libcublasLt.so", "libcublasLt.so.13"),
    ("libcudart.so", "libcudart.so.13"),
    ("libnvrtc.so", "libnvrtc.so.13"),
    ("libcurand.so", "libcurand.so.10"),
];

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

fn mpi_present() -> bool {
    let libclang = std::env::var_os("LIBCLANG_PATH").is_some()
        || succeeds(Command::new("sh").args(["-c", "ls /usr/lib/llvm-*/lib/libclang*.so*"]));
    libclang && succeeds(Command::new("mpicc").arg("--showme:version"))
}

/// Whether the `mpi` feature can be built here: Open MPI and libclang, installed with apt-get
/// when running as root. Without them the tests run without MPI (and say so).
fn ensure_mpi() -> bool {
    if mpi_present() {
        return true;
    }
    if !(is_root() && Path::new("/usr/bin/apt-get").is_file()) {
        eprintln!(
            "xtask: no MPI here: the data-parallel tests are skipped (install with: sudo apt-get install {})",
            MPI_PACKAGES.join(" ")
        );
        return false;
    }
    eprintln!("xtask: installing {} with apt-get", MPI_PACKAGES.join(", "));
    let updated = succeeds(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    let ok = updated
        && Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(MPI_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    ok && mpi_present()
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
        "import PIL, h5py, numpy, tensorboard, onnx, onnxruntime",
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

/// The wheels' CUDA tree (`site-packages/nvidia/cu13`) in `venv`.
fn wheel_cuda_root(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13"))
        .find(|p| p.join("bin/nvcc").is_file())
}

/// `target/cuda-home`: a CUDA home for candle's build (nvcc, headers, the libraries it links
/// under their link names, and a stub `libcuda.so` — the driver's library exists only on a
/// GPU machine — made from `cuda.h`'s function names).
fn ensure_cuda_home(root: &Path) -> PathBuf {
    let probe = "import os, nvidia; d = os.path.join(list(nvidia.__path__)[0], 'cu13'); \
                 assert all(os.path.exists(os.path.join(d, p)) for p in \
                 ['bin/nvcc', 'lib/libcublas.so.13', 'lib/libcurand.so.10', 'nvvm', 'include/cuda.h', \
                 '../cudnn/lib/libcudnn.so.9', '../nccl/lib/libnccl.so.2'])";
    let venv = ensure_venv(&root.join("target/cuda-venv"), probe, CUDA_PACKAGES);
    let Some(cuda) = wheel_cuda_root(&venv) else {
        eprintln!("xtask: no nvidia/cu13 with nvcc in {}", venv.display());
        exit(1);
    };
    let home = root.join("target/cuda-home");
    let lib64 = home.join("lib64");
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("xtask: {what}: {e}");
        exit(1)
    };
    std::fs::create_dir_all(&lib64).unwrap_or_else(|e| fail("target/cuda-home", e));
    let link = |target: PathBuf, at: PathBuf| {
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(&target, &at)
            .unwrap_or_else(|e| fail(&at.display().to_string(), e));
    };
    for dir in ["bin", "include", "nvvm"] {
        link(cuda.join(dir), home.join(dir));
    }
    for (name, file) in CUDA_LIBRARIES {
        link(cuda.join("lib").join(file), lib64.join(name));
    }
    link(
        cuda.join("../cudnn/lib/libcudnn.so.9"),
        lib64.join("libcudnn.so"),
    );
    link(
        cuda.join("../nccl/lib/libnccl.so.2"),
        lib64.join("libnccl.so"),
    );
    let stub = lib64.join("libcuda.so");
    if !stub.is_file() {
        let header = std::fs::read_to_string(cuda.join("include/cuda.h"))
            .unwrap_or_else(|e| fail("cuda.h", e));
        let mut names = std::collections::BTreeSet::new();
        for word in header.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let is_api =
                word.len() > 2 && word.starts_with("cu") && word.as_bytes()[2].is_ascii_uppercase();
            if is_api {
                names.insert(word.to_string());
            }
        }
        let source: String = names
            .iter()
            .map(|n| format!("void {n}(void) {{}}\n"))
            .collect();
        let c = home.join("cuda_stub.c");
        std::fs::write(&c, source).unwrap_or_else(|e| fail("cuda_stub.c", e));
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(&stub)
            .arg(&c)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("xtask: could not build the libcuda stub with cc");
            exit(1);
        }
    }
    // Under its soname too, so that `SKIP_CUDA=1 benches/gpu/run.sh` can start a CUDA binary
    // here; nothing else puts this folder on a library path.
    link(PathBuf::from("libcuda.so"), lib64.join("libcuda.so.1"));
    home
}

/// cargo with the CUDA home: nvcc on the PATH, compute capability 9.0 (the H200's; no GPU
/// here to ask), its own target folder so CPU builds stay as they are.
fn cuda_cargo(root: &Path, home: &Path) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![home.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .env("PATH", std::env::join_paths(paths).expect("valid PATH"))
        .env("CUDA_HOME", home)
        .env("CUDA_ROOT", home)
        .env("CUDA_COMPUTE_CAP", "90")
        .env("CARGO_TARGET_DIR", root.join("target/cuda"));
    cmd
}

/// The pack's binaries: `simplecnn` with candle's own CUDA convolutions, `simplecnn-cudnn`
/// with cuDNN's (two builds, since candle chooses at compile time).
const PACKED_BUILDS: &[(&str, &str)] = &[("simplecnn", "cuda"), ("simplecnn-cudnn", "cudnn")];

/// A release CUDA build (`cargo build --release ARGS` with the CUDA home), its binary `built`
/// stripped into `into`; exits on failure.
fn build_stripped(root: &Path, home: &Path, args: &[&str], built: &str, into: &Path) {
    let ok = cuda_cargo(root, home)
        .args(["build", "--release"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask: the CUDA build with {} failed", args.join(" "));
        exit(1);
    }
    let copied = Command::new("strip")
        .arg("-o")
        .arg(into)
        .arg(root.join("target/cuda/release").join(built))
        .status()
        .is_ok_and(|s| s.success());
    if !copied {
        eprintln!("xtask: could not strip the binary into {}", into.display());
        exit(1);
    }
}

/// `target/gpu-pack`: what the GPU machine needs besides the working tree.
fn gpu_pack(root: &Path) {
    let home = ensure_cuda_home(root);
    let pack = root.join("target/gpu-pack");
    let _ = std::fs::remove_dir_all(&pack);
    let stage = pack.join("stage");
    std::fs::create_dir_all(stage.join("lib")).expect("target/gpu-pack");
    for (name, features) in PACKED_BUILDS {
        // Each feature set keeps its own artefacts in target/cuda: rebuilding one leaves the
        // other cached.
        let args = ["-p", "simplecnn-cli", "--features", features];
        build_stripped(root, &home, &args, "simplecnn", &stage.join(name));
    }
    // The NCCL collective's check (world size 1 on the lent GPU; no MPI there).
    let check = "simplecnn-nccl-check";
    let args = [
        "-p",
        "simplecnn-collective",
        "--features",
        "nccl",
        "--bin",
        check,
    ];
    build_stripped(root, &home, &args, check, &stage.join(check));
    // The shared libraries they link (HDF5 and its dependencies), but for glibc's, the C++
    // runtime's (a CUDA image has newer ones) and CUDA's (the GPU machine's own).
    let skip = [
        "libc.so",
        "libm.so",
        "libdl.so",
        "libpthread.so",
        "librt.so",
        "libresolv.so",
        "libnss",
        "libutil.so",
        "libanl.so",
        "ld-linux",
        "libstdc++",
        "libgcc_s",
        "libcuda.so",
        "libcublas",
        "libcurand",
        "libnvrtc",
        "libcudart",
        "libcudnn",
        "libnccl",
    ];
    for (name, _) in PACKED_BUILDS {
        let ldd = Command::new("ldd")
            .arg(stage.join(name))
            .output()
            .expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some("=>"), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if path == "not" || skip.iter().any(|s| name.starts_with(s)) {
                continue;
            }
            std::fs::copy(path, stage.join("lib").join(name)).expect("copy a library");
        }
    }
    // Where the pack came from, for the results: the GPU machine's copy has no repository.
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    std::fs::write(pack.join("commit.txt"), format!("{commit}\n")).expect("commit.txt");
    // xz with a dictionary that spans both binaries: the second (the same PTX and nearly the
    // same code) then costs little; the binaries' PTX and the libraries shrink ~160 MB → ~20 MB.
    let packed = Command::new("tar")
        .arg("cJf")
        .arg(pack.join("simplecnn-cuda.tar.xz"))
        .arg("-C")
        .arg(&stage)
        .arg(".")
        .env("XZ_OPT", "-T1 --lzma2=preset=9,dict=192MiB")
        .status()
        .is_ok_and(|s| s.success());
    if !packed {
        eprintln!("xtask: tar cJf failed");
        exit(1);
    }
    let _ = std::fs::remove_dir_all(&stage);
    let shared = root.join("../shared/data");
    for file in ["cifar10-jpg.tar.gz", "make_cifar_bin.py"] {
        if let Err(e) = std::fs::copy(shared.join(file), pack.join(file)) {
            eprintln!("xtask: {}: {e}", shared.join(file).display());
            exit(1);
        }
    }
    let du = Command::new("du")
        .arg("-sh")
        .arg(&pack)
        .output()
        .expect("du");
    print!("xtask: {}", String::from_utf8_lossy(&du.stdout));
    println!("xtask: on the GPU machine, from the repository root: bash benches/gpu/run.sh");
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
        if ensure_mpi() {
            println!("xtask: Open MPI found (the `mpi` feature builds)");
        }
        if args.iter().any(|a| a == "--cuda") {
            let home = ensure_cuda_home(&root);
            println!("xtask: CUDA 13.0 for building at {}", home.display());
        }
        return;
    }
    if args.first().map(String::as_str) == Some("cuda") {
        let home = ensure_cuda_home(&root);
        run(cuda_cargo(&root, &home).args(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("gpu-pack") {
        gpu_pack(&root);
        return;
    }
    if args.first().map(String::as_str) == Some("slurm-up") {
        run(Command::new("bash").arg(root.join("xtask/scripts/slurm-up.sh")));
    }
    if args.first().map(String::as_str) == Some("tensorboard") {
        let venv = ensure_python_venv(&root);
        let dir = args
            .get(1)
            .map_or_else(|| root.join("results"), PathBuf::from);
        if !dir.is_dir() {
            eprintln!("xtask: {}: no such folder of runs", dir.display());
            exit(1);
        }
        // TensorBoard prints its address ("TensorBoard 2.x at http://localhost:6006/") itself.
        eprintln!(
            "xtask: TensorBoard over {} (runs with the `tensorboard` callback; Ctrl-C stops it)",
            dir.display()
        );
        run(Command::new(venv.join("bin/tensorboard"))
            .arg("--logdir")
            .arg(&dir)
            .args(["--host", "localhost"])
            .args(&args[2..]));
    }
    if args.first().map(String::as_str) == Some("test") {
        let venv = ensure_python_venv(&root);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv.join("bin")];
        paths.extend(std::env::split_paths(&path));
        let mut test = Command::new(cargo());
        test.current_dir(&root)
            .args(["test", "--workspace", "--release"]);
        if ensure_mpi() {
            test.args(["--features", "simplecnn-cli/mpi"]);
        }
        run(test
            .args(&args[1..])
            .env("PATH", std::env::join_paths(paths).expect("valid PATH"))
            .env("SIMPLECNN_PYTHON", venv.join("bin/python")));
    }
    let mut cli = Command::new(cargo());
    let bench_onnx = args.first().map(String::as_str) == Some("bench")
        && args
            .iter()
            .any(|a| a == "--reference" || a == "--onnxruntime")
        && !args.iter().any(|a| a == "--python-onnx");
    cli.args(["run", "--quiet", "--release", "-p", "simplecnn-cli", "--"])
        .args(&args);
    let bench_reference = args.first().map(String::as_str) == Some("bench")
        && args.iter().any(|a| a == "--reference");
    if bench_reference {
        for (flag, venv) in ensure_reference_venvs(&root) {
            if !args.iter().any(|a| a == flag) {
                cli.arg(flag).arg(venv.join("bin/python"));
            }
        }
    }
    if bench_reference || bench_onnx {
        cli.arg("--scripts").arg(root.join("benches/reference"));
    }
    if bench_onnx {
        // ONNX Runtime's inference row runs from the test venv.
        let venv = ensure_python_venv(&root);
        cli.arg("--python-onnx").arg(venv.join("bin/python"));
    }
    run(&mut cli);
}
