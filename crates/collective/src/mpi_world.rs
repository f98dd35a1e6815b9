//! [`Collective`] over MPI (rsmpi): the processes `mpirun -np N` or `srun` started.

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use crate::{Collective, CollectiveError, Result};

/// MPI's world communicator, and the universe that keeps MPI initialised (MPI is finalised
/// when this is dropped).
pub struct MpiWorld {
    world: SimpleCommunicator,
    _universe: Universe,
    description: String,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED (checked in `start`), so MPI may be
// called from any thread as long as calls never overlap; `&self` methods are the only way in,
// and every one holds `lock` while it calls MPI.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl MpiWorld {
    /// Initialises MPI (once per process: a second call is an error).
    pub fn start() -> Result<MpiWorld> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| {
                CollectiveError::Setup("MPI was initialised already in this process".into())
            })?;
        if threading < mpi::Threading::Serialized {
            return Err(CollectiveError::Setup(format!(
                "the MPI library gives {threading:?} threading; MPI_THREAD_SERIALIZED is needed"
            )));
        }
        let library = mpi::environment::library_version()
            // The C string's terminating NUL comes along in some versions.
            .map(|v| {
                v.replace('\0', "")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let (major, minor) = mpi::environment::version();
        let world = universe.world();
        Ok(MpiWorld {
            world,
            _universe: universe,
            description: format!("{library} (MPI {major}.{minor})"),
        })
    }

    fn gather<T: Equivalence + Copy + Default>(&self, local: &[T]) -> Result<Vec<Vec<T>>> {
        let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let count =
            Count::try_from(local.len()).map_err(|_| CollectiveError::TooLarge(local.len()))?;
        let size = self.world.size() as usize;
        let mut counts: Vec<Count> = vec![0; size];
        self.world.all_gather_into(&count, &mut counts[..]);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        // The displacements are counts too.
        if Count::try_from(total).is_err() {
            return Err(CollectiveError::TooLarge(total));
        }
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let first = *at;
                *at += c;
                Some(first)
            })
            .collect();
        let mut all = vec![T::default(); total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        let mut out = Vec::with_capacity(size);
        let mut rest = &all[..];
        for &c in &counts {
            let (mine, after) = rest.split_at(c as usize);
            out.push(mine.to_vec());
            rest = after;
        }
        Ok(out)
    }
}

impl MpiWorld {
    /// [`Collective::chain_f32`] on point-to-point messages: receive the running sum from the
    /// previous rank, add, send it to the next; the last rank broadcasts the total.
    fn chain<T: Equivalence + Copy + Default>(
        &self,
        len: usize,
        add_mine: &mut dyn FnMut(&mut [T]),
    ) -> Result<Vec<T>> {
        if Count::try_from(len).is_err() {
            return Err(CollectiveError::TooLarge(len));
        }
        let (rank, size) = (self.world.rank(), self.world.size());
        let mut running = vec![T::default(); len];
        if rank > 0 {
            let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            self.world
                .process_at_rank(rank - 1)
                .receive_into(&mut running[..]);
        }
        add_mine(&mut running);
        let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if rank + 1 < size {
            self.world.process_at_rank(rank + 1).send(&running[..]);
        }
        self.world
            .process_at_rank(size - 1)
            .broadcast_into(&mut running[..]);
        Ok(running)
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    crate::by_typed_methods!();

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn abort(&self, code: i32) -> ! {
        // MPI_Abort ends every process of the job (mpirun reports which one called it).
        self.world.abort(code)
    }
}
