//! A check any [`Collective`] can run on the machines it will train on: its ordered sums
//! equal one process adding every partial in order, bit for bit, and its gathers return
//! every process' values whole and in rank order. The check programs (`src/bin/`) run it
//! under `mpirun` (MPI) and on GPUs (NCCL); the test suite runs it on threads.

use crate::{fold_partials, share, Collective, Result};

/// A value of very different sizes for each (group, index), so that any other order of
/// additions gives other bits.
fn value(group: usize, index: usize) -> f64 {
    let h = (group * 7919 + index * 104_729) as f64;
    ((h * 0.618_033_988_7).fract() - 0.5) * 10f64.powi(((group + index) % 9) as i32 - 4)
}

/// Whether `fold_partials` over `groups` partials of `len` values, shared between the
/// processes as training shares a batch, gives one process' sums (f32 and f64), and whether
/// gathers of different lengths per process come back whole. The same answer on every
/// process (each one's verdict is gathered).
pub fn sums_and_gathers_are_exact(c: &dyn Collective, groups: usize, len: usize) -> Result<bool> {
    let (first, count) = share(groups, c.size(), c.rank());
    let all32: Vec<Vec<f32>> = (0..groups)
        .map(|g| (0..len).map(|i| value(g, i) as f32).collect())
        .collect();
    let all64: Vec<Vec<f64>> = (0..groups)
        .map(|g| (0..len).map(|i| value(g, i)).collect())
        .collect();
    let same32 = same_bits(
        &fold_partials(c, &all32[first..first + count], len)?,
        &in_order(&all32, len),
        |v| u64::from(v.to_bits()),
    );
    let same64 = same_bits(
        &fold_partials(c, &all64[first..first + count], len)?,
        &in_order(&all64, len),
        f64::to_bits,
    );
    // Process r gathers r + 1 values r, 10 r, …: lengths differ, order shows.
    let mine: Vec<f32> = (0..=c.rank()).map(|i| (c.rank() * 10 + i) as f32).collect();
    let gathered = c.all_gather_f32(&mine)?;
    let gathers = gathered.len() == c.size()
        && gathered.iter().enumerate().all(|(r, got)| {
            let want: Vec<f32> = (0..=r).map(|i| (r * 10 + i) as f32).collect();
            got == &want
        });
    let verdicts = c.all_gather_bytes(&[u8::from(same32 && same64 && gathers)])?;
    Ok(verdicts.iter().all(|v| v == &[1]))
}

/// Every partial added one after another from zero: one process' sum.
fn in_order<T: crate::Summand>(partials: &[Vec<T>], len: usize) -> Vec<T> {
    let mut total = vec![T::default(); len];
    for p in partials {
        total.iter_mut().zip(p).for_each(|(a, b)| *a += *b);
    }
    total
}

fn same_bits<T: Copy>(a: &[T], b: &[T], bits: impl Fn(T) -> u64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| bits(*x) == bits(*y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::ThreadWorld;

    #[test]
    fn passes_on_one_process_and_on_threads() {
        assert!(sums_and_gathers_are_exact(&crate::SingleProcess, 16, 300).unwrap());
        for n in [2, 3] {
            let verdicts =
                ThreadWorld::run(n, |c| sums_and_gathers_are_exact(&c, 16, 300).unwrap());
            assert!(verdicts.iter().all(|&v| v), "{n} threads: {verdicts:?}");
        }
    }
}
