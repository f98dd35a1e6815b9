//! On GPUs: [`self_check::sums_and_gathers_are_exact`] over NCCL, one GPU per process (GPU
//! `rank % GPUs`). One process alone uses GPU 0 with no MPI; under `mpirun -np N` (built with
//! the `mpi` feature too) MPI carries NCCL's id. Rank 0 prints `ok N (NCCL …)`, or why not;
//! the exit status is 0 only for `ok`.

use std::sync::Arc;

use simplecnn_collective::launch::Launch;
use simplecnn_collective::{nccl_world::NcclWorld, self_check, Collective, SingleProcess};

/// The processes the launcher started: one alone, or MPI's (which carries NCCL's id).
fn bootstrap() -> Arc<dyn Collective> {
    match Launch::from_env() {
        Launch::Alone | Launch::Mpi(1) => Arc::new(SingleProcess),
        #[cfg(feature = "mpi")]
        Launch::Mpi(_) | Launch::Pmix => {
            Arc::new(simplecnn_collective::mpi_world::MpiWorld::start().expect("MPI starts"))
        }
        other => {
            eprintln!(
                "started as {other:?}: several processes need the `mpi` feature and an MPI plugin"
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let bootstrap = bootstrap();
    let gpus = cudarc::driver::CudaContext::device_count()
        .unwrap_or(1)
        .max(1) as usize;
    let world = match NcclWorld::start(bootstrap.clone(), bootstrap.rank() % gpus) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("rank {}: {e}", bootstrap.rank());
            std::process::exit(2);
        }
    };
    let exact = self_check::sums_and_gathers_are_exact(&world, 16, 1000);
    if world.rank() == 0 {
        match &exact {
            Ok(true) => println!("ok {} ({})", world.size(), world.describe()),
            Ok(false) => println!("different sums or gathers on {} GPUs", world.size()),
            Err(e) => println!("error: {e}"),
        }
    }
    if !matches!(exact, Ok(true)) {
        std::process::exit(1);
    }
}
