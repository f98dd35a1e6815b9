//! A [`Collective`] that counts what passes through another: the time spent in its calls
//! (waiting for the other processes included) and the bytes this process sends and receives.
//! What the benchmarks report as the exchange's share of a step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::{Collective, Result};

/// Totals since the meter was made.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Meter {
    pub calls: u64,
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// `inner`, with every call timed and its bytes counted.
pub struct Metered {
    inner: Arc<dyn Collective>,
    calls: AtomicU64,
    nanos: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Metered {
    pub fn new(inner: Arc<dyn Collective>) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// What has passed so far.
    pub fn meter(&self) -> Meter {
        Meter {
            calls: self.calls.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
        }
    }

    fn count<T>(
        &self,
        local: &[T],
        call: impl FnOnce() -> Result<Vec<Vec<T>>>,
    ) -> Result<Vec<Vec<T>>> {
        let start = Instant::now();
        let out = call();
        let nanos = start.elapsed().as_nanos() as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        let size = std::mem::size_of::<T>() as u64;
        self.sent
            .fetch_add(local.len() as u64 * size, Ordering::Relaxed);
        if let Ok(all) = &out {
            let others: usize = all
                .iter()
                .enumerate()
                .filter(|(rank, _)| *rank != self.inner.rank())
                .map(|(_, v)| v.len())
                .sum();
            self.received
                .fetch_add(others as u64 * size, Ordering::Relaxed);
        }
        out
    }
}

impl Metered {
    /// A chain's traffic as MPI's point-to-point version moves it: the running sum from the
    /// process before and to the one after, and the total from the last to the others. The
    /// time includes this process' own additions and the wait for the ones before it.
    fn count_chain<T>(&self, len: usize, call: impl FnOnce() -> Result<Vec<T>>) -> Result<Vec<T>> {
        let start = Instant::now();
        let out = call();
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let (rank, last) = (self.inner.rank(), self.inner.size().saturating_sub(1));
        let received = u64::from(rank > 0) + u64::from(rank != last);
        let sent = u64::from(rank < last) + u64::from(rank == last && last > 0);
        self.received.fetch_add(received * bytes, Ordering::Relaxed);
        self.sent.fetch_add(sent * bytes, Ordering::Relaxed);
        out
    }
}

impl Collective for Metered {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<Vec<f32>>> {
        self.count(local, || self.inner.all_gather_f32(local))
    }

    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.count(local, || self.inner.all_gather_f64(local))
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.count(local, || self.inner.all_gather_bytes(local))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn chain_f32(&self, len: usize, add_mine: &mut dyn FnMut(&mut [f32])) -> Result<Vec<f32>> {
        self.count_chain::<f32>(len, || self.inner.chain_f32(len, add_mine))
    }

    fn chain_f64(&self, len: usize, add_mine: &mut dyn FnMut(&mut [f64])) -> Result<Vec<f64>> {
        self.count_chain::<f64>(len, || self.inner.chain_f64(len, add_mine))
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::ThreadWorld;

    #[test]
    fn counts_the_bytes_each_rank_sends_and_receives() {
        let meters = ThreadWorld::run(3, |rank| {
            let m = Metered::new(Arc::new(rank));
            let mine = vec![1f32; m.rank() + 1];
            m.all_gather_f32(&mine).unwrap();
            m.all_gather_f64(&[2.0]).unwrap();
            m.meter()
        });
        // Rank r sends r + 1 floats and one f64; receives the others' (1 + 2 + 3 - (r + 1)).
        for (r, m) in meters.iter().enumerate() {
            assert_eq!(m.calls, 2);
            assert_eq!(m.bytes_sent, 4 * (r as u64 + 1) + 8);
            assert_eq!(m.bytes_received, 4 * (6 - (r as u64 + 1)) + 8 * 2);
        }
    }
}
