//! Run under `mpirun -np N`: [`self_check::sums_and_gathers_are_exact`] on MPI; rank 0 prints
//! `ok N (the MPI)` (tests/mpi.rs reads it).

use simplecnn_collective::{mpi_world::MpiWorld, self_check, Collective};

fn main() {
    let world = MpiWorld::start().expect("MPI starts");
    let exact = self_check::sums_and_gathers_are_exact(&world, 16, 1000).expect("collectives");
    if world.rank() == 0 {
        match exact {
            true => println!("ok {} ({})", world.size(), world.describe()),
            false => println!("different sums or gathers on {} processes", world.size()),
        }
    }
}
