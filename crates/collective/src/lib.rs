//! How the processes of one training run combine what each of them computed.
//!
//! A data-parallel run splits each global batch into fixed groups of images ("partials": a
//! kernel gradient summed over a group, a BatchNorm layer's per-channel sums over 8 images);
//! a process computes the partials of a contiguous run of whole groups. [`fold_partials`]
//! adds every process' partials *in the global order of the groups*, starting from zero, as
//! one process adding all of them one after another does: the sum has the same bits on any
//! number of processes.
//!
//! [`Collective`] is the seam: [`SingleProcess`] (one process; nothing to exchange) and, with
//! the `mpi` feature, [`mpi_world::MpiWorld`] (rsmpi over the MPI the program was started
//! with); with the `nccl` feature, [`nccl_world::NcclWorld`] (one GPU per process, NCCL's
//! id carried by another collective); [`threads::ThreadWorld`] simulates processes with
//! threads, for tests. [`self_check`] checks any of them.
//!
//! This crate knows nothing of models or training; it prints nothing.

pub mod launch;
pub mod metered;
#[cfg(feature = "mpi")]
pub mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl_world;
pub mod self_check;
pub mod threads;

/// What went wrong in a collective operation.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} sent {got} values where {expected} were expected: {what}")]
    Mismatch {
        rank: usize,
        got: usize,
        expected: usize,
        what: &'static str,
    },
    #[error("{0} values are more than one MPI message holds (2^31 - 1)")]
    TooLarge(usize),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, CollectiveError>;

/// The processes of one run, and the two operations an exact data-parallel step needs.
pub trait Collective: Send + Sync {
    /// This process' number, `0..size()`.
    fn rank(&self) -> usize;
    /// How many processes the run has.
    fn size(&self) -> usize;
    /// Every process' `local` values, each process' in one piece, in rank order (the lengths
    /// may differ between processes): the same vector on every process.
    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<Vec<f32>>>;
    /// [`Collective::all_gather_f32`] for f64 values.
    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<Vec<f64>>>;
    /// Every process' bytes (a fingerprint of its program and experiment, to refuse a run
    /// whose processes differ), in rank order.
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// The implementation and its version, for the run's record ("Open MPI v4.1.4").
    fn describe(&self) -> String;
    /// The sum of every process' contributions added in rank order, from zeros: each process
    /// receives the running sum of the processes before it, `add_mine` adds its own to it (in
    /// its own order), and the last one's total is everyone's result. Each process sends and
    /// receives about `2 · len` values (the running sum, then the total), however many
    /// partials it adds. The default passes the running sum along with all-gathers.
    fn chain_f32(&self, len: usize, add_mine: &mut dyn FnMut(&mut [f32])) -> Result<Vec<f32>> {
        chain_by_gathers(self.size(), self.rank(), len, add_mine, |v| {
            self.all_gather_f32(v)
        })
    }
    /// [`Collective::chain_f32`] for f64 values.
    fn chain_f64(&self, len: usize, add_mine: &mut dyn FnMut(&mut [f64])) -> Result<Vec<f64>> {
        chain_by_gathers(self.size(), self.rank(), len, add_mine, |v| {
            self.all_gather_f64(v)
        })
    }
    /// Ends every process of the run with `code`: what a process that fails alone does, so
    /// that the others do not wait for it forever.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The gathers and ordered sums of a [`Collective`] whose own generic `gather::<T>(local)` and
/// `chain::<T>(len, add_mine)` do them for every value type (MPI's and NCCL's).
#[cfg(any(feature = "mpi", feature = "nccl"))]
#[macro_export]
#[doc(hidden)]
macro_rules! by_typed_methods {
    () => {
        fn all_gather_f32(&self, local: &[f32]) -> $crate::Result<Vec<Vec<f32>>> {
            self.gather(local)
        }

        fn all_gather_f64(&self, local: &[f64]) -> $crate::Result<Vec<Vec<f64>>> {
            self.gather(local)
        }

        fn all_gather_bytes(&self, local: &[u8]) -> $crate::Result<Vec<Vec<u8>>> {
            self.gather(local)
        }

        fn chain_f32(
            &self,
            len: usize,
            add_mine: &mut dyn FnMut(&mut [f32]),
        ) -> $crate::Result<Vec<f32>> {
            self.chain(len, add_mine)
        }

        fn chain_f64(
            &self,
            len: usize,
            add_mine: &mut dyn FnMut(&mut [f64]),
        ) -> $crate::Result<Vec<f64>> {
            self.chain(len, add_mine)
        }
    };
}

/// One process: nothing to exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<Vec<f32>>> {
        Ok(vec![local.to_vec()])
    }

    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        Ok(vec![local.to_vec()])
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }

    fn describe(&self) -> String {
        "one process".into()
    }
}

/// The groups `0..groups` split into `size` contiguous runs as even as whole groups allow
/// (the first `groups % size` ranks one more): rank `rank`'s `(first, count)`.
pub fn share(groups: usize, size: usize, rank: usize) -> (usize, usize) {
    let (base, extra) = (groups / size, groups % size);
    let count = base + usize::from(rank < extra);
    let first = rank * base + rank.min(extra);
    (first, count)
}

/// [`Collective::chain_f32`] by all-gathers: in round `r`, process `r` sends the running sum
/// (with its contributions added) and the others nothing.
fn chain_by_gathers<T: Summand>(
    size: usize,
    rank: usize,
    len: usize,
    add_mine: &mut dyn FnMut(&mut [T]),
    gather: impl Fn(&[T]) -> Result<Vec<Vec<T>>>,
) -> Result<Vec<T>> {
    let mut running = vec![T::default(); len];
    for turn in 0..size {
        if turn == rank {
            add_mine(&mut running);
        }
        if size == 1 {
            break;
        }
        let mine: &[T] = if turn == rank { &running } else { &[] };
        let mut all = gather(mine)?;
        let passed = std::mem::take(&mut all[turn]);
        if passed.len() != len {
            return Err(CollectiveError::Mismatch {
                rank: turn,
                got: passed.len(),
                expected: len,
                what: "a running sum of another length",
            });
        }
        running = passed;
    }
    Ok(running)
}

/// A value [`fold_partials`] adds: f32 (gradients) or f64 (BatchNorm's sums).
pub trait Summand: Copy + Default + std::ops::AddAssign + Send + Sync + 'static {
    /// [`Collective::chain_f32`] for this type.
    fn chain(c: &dyn Collective, len: usize, add: &mut dyn FnMut(&mut [Self]))
        -> Result<Vec<Self>>;
}

impl Summand for f32 {
    fn chain(c: &dyn Collective, len: usize, add: &mut dyn FnMut(&mut [f32])) -> Result<Vec<f32>> {
        c.chain_f32(len, add)
    }
}

impl Summand for f64 {
    fn chain(c: &dyn Collective, len: usize, add: &mut dyn FnMut(&mut [f64])) -> Result<Vec<f64>> {
        c.chain_f64(len, add)
    }
}

/// The sum of every process' contributions in the global order, from zero: `add_mine` adds
/// this process' (its groups, in order) to the running sum of the processes before it.
/// Bit for bit what one process adding every group in order computes, moving about two sums'
/// worth of values per process instead of every partial.
pub fn fold_in_order<T: Summand>(
    c: &dyn Collective,
    len: usize,
    add_mine: &mut dyn FnMut(&mut [T]),
) -> Result<Vec<T>> {
    T::chain(c, len, add_mine)
}

/// The sum of every process' `partials` (each `len` long; this process' are the groups of
/// its share, in order), added one after another in rank order starting from zeros: what one
/// process holding every partial computes with the same loop, bit for bit (through
/// [`fold_in_order`]: each process passes on a running sum, not its partials).
pub fn fold_partials<T: Summand>(
    c: &dyn Collective,
    partials: &[Vec<T>],
    len: usize,
) -> Result<Vec<T>> {
    if let Some(p) = partials.iter().find(|p| p.len() != len) {
        return Err(CollectiveError::Mismatch {
            rank: c.rank(),
            got: p.len(),
            expected: len,
            what: "partials of another length",
        });
    }
    fold_in_order(c, len, &mut |total: &mut [T]| {
        for p in partials {
            total.iter_mut().zip(p).for_each(|(a, b)| *a += *b);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_even_and_cover_every_group() {
        for groups in 0..40 {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let (first, count) = share(groups, size, rank);
                    assert_eq!(first, next);
                    assert!(count == groups / size || count == groups / size + 1);
                    next += count;
                }
                assert_eq!(next, groups);
            }
        }
        // 128 chunks over 3 processes: 43 + 43 + 42.
        assert_eq!(
            (0..3).map(|r| share(128, 3, r).1).collect::<Vec<_>>(),
            [43, 43, 42]
        );
    }

    #[test]
    fn one_process_folds_in_order_from_zero() {
        // 1e8 + 1 - 1e8 in f32 is 0 in this order and 1 in another: the order is the result.
        let partials = vec![vec![1e8f32], vec![1.0], vec![-1e8]];
        assert_eq!(fold_partials(&SingleProcess, &partials, 1).unwrap(), [0.0]);
        let other = vec![vec![1e8f32], vec![-1e8], vec![1.0]];
        assert_eq!(fold_partials(&SingleProcess, &other, 1).unwrap(), [1.0]);
    }
}
