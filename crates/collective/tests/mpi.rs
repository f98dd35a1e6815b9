//! `fold_partials` on 1, 2 and 3 MPI processes gives the sum one process computes, bit for
//! bit (`src/bin/fold_check.rs` under `mpirun`). Needs the `mpi` feature and `mpirun`
//! (`cargo xtask` installs Open MPI); skipped without them outside CI.
#![cfg(feature = "mpi")]

use std::process::Command;

fn mpirun_np(n: usize, program: &str) -> Option<String> {
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", &n.to_string(), program])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output();
    match out {
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI needs mpirun: {e}");
            eprintln!("skipping: no mpirun ({e})");
            None
        }
    }
}

#[test]
fn partials_fold_to_the_same_bits_on_any_number_of_processes() {
    let program = env!("CARGO_BIN_EXE_simplecnn-fold-check");
    for n in [1, 2, 3] {
        let Some(out) = mpirun_np(n, program) else {
            return;
        };
        assert!(out.starts_with(&format!("ok {n} ")), "{n} processes: {out}");
    }
}
