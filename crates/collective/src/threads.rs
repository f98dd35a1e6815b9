//! Processes simulated by threads of one program: [`ThreadWorld::ranks`] gives one
//! [`Collective`] per thread, exchanging through shared memory. What tests use to run a
//! data-parallel step on several "processes" without an MPI.

use std::sync::{Arc, Condvar, Mutex};

use crate::{Collective, CollectiveError, Result};

/// The state one round of all-gathers shares.
#[derive(Default)]
struct Round {
    /// Each rank's contribution to the round in progress.
    slots: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// The last finished round's contributions, and how many ranks have yet to read them.
    result: Arc<Vec<Vec<u8>>>,
    unread: usize,
    generation: u64,
}

struct Shared {
    size: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

/// `size` ranks that exchange through memory; give each to its own thread.
pub struct ThreadWorld;

impl ThreadWorld {
    /// The collectives of ranks `0..size`.
    pub fn ranks(size: usize) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            size,
            round: Mutex::new(Round {
                slots: vec![None; size],
                ..Round::default()
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl ThreadWorld {
    /// Runs `f` on each of `size` ranks, each in a thread of its own: their results, in rank
    /// order (a rank's panic is passed on).
    pub fn run<T: Send>(size: usize, f: impl Fn(ThreadRank) -> T + Sync) -> Vec<T> {
        std::thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = Self::ranks(size)
                .into_iter()
                .map(|rank| scope.spawn(move || f(rank)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

/// One rank of a [`ThreadWorld`].
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadRank {
    fn gather(&self, local: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let poisoned = |_| CollectiveError::Setup("a rank's thread panicked".into());
        let s = &self.shared;
        let mut round = s.round.lock().map_err(poisoned)?;
        // Wait until every rank has read the previous round.
        while round.unread > 0 {
            round = s.changed.wait(round).map_err(poisoned)?;
        }
        round.slots[self.rank] = Some(local);
        round.arrived += 1;
        if round.arrived == s.size {
            let all = round.slots.iter_mut().map(|v| v.take().unwrap_or_default());
            round.result = Arc::new(all.collect());
            round.arrived = 0;
            round.unread = s.size;
            round.generation += 1;
            s.changed.notify_all();
        } else {
            let generation = round.generation;
            while round.generation == generation {
                round = s.changed.wait(round).map_err(poisoned)?;
            }
        }
        let result = round.result.clone();
        round.unread -= 1;
        if round.unread == 0 {
            s.changed.notify_all();
        }
        Ok(result.as_ref().clone())
    }
}

/// Little-endian bytes of `values`, and back.
fn to_bytes<const N: usize, T: Copy>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

fn from_bytes<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().unwrap_or([0; N])))
        .collect()
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<Vec<f32>>> {
        let all = self.gather(to_bytes(local, f32::to_le_bytes))?;
        Ok(all
            .iter()
            .map(|b| from_bytes(b, f32::from_le_bytes))
            .collect())
    }

    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        let all = self.gather(to_bytes(local, f64::to_le_bytes))?;
        Ok(all
            .iter()
            .map(|b| from_bytes(b, f64::from_le_bytes))
            .collect())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.gather(local.to_vec())
    }

    fn describe(&self) -> String {
        format!("{} threads", self.shared.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold_partials;

    #[test]
    fn threads_gather_in_rank_order_and_fold_as_one_process() {
        // 12 partials of 3 values; one process folds them all, 1..4 threads fold their shares.
        let partials: Vec<Vec<f32>> = (0..12)
            .map(|g| {
                (0..3)
                    .map(|j| (g * 7 + j) as f32 * 1e-3 + 1e7 * (g % 2) as f32)
                    .collect()
            })
            .collect();
        let alone = fold_partials(&crate::SingleProcess, &partials, 3).unwrap();
        for size in 1..5 {
            let results = ThreadWorld::run(size, |rank| {
                let (first, count) = crate::share(12, rank.size(), rank.rank());
                let mine = &partials[first..first + count];
                // Two rounds, to exercise the hand-over between them.
                let names = rank.all_gather_bytes(&[rank.rank() as u8]).unwrap();
                assert_eq!(names, (0..size as u8).map(|r| vec![r]).collect::<Vec<_>>());
                fold_partials(&rank, mine, 3).unwrap()
            });
            for r in results {
                assert_eq!(
                    r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{size} threads"
                );
            }
        }
    }
}
