//! Where a process' images lie in a step's global batch, for the ops that sum over the batch.
//!
//! A sum over a batch (a kernel's gradient, BatchNorm's statistics) is a sequence of partials
//! over fixed groups of images indexed by their position in the *global* batch, added in that
//! order from zero. A process holds a contiguous run of whole groups and computes their
//! partials; [`BatchShard::fold`] adds every process' partials in the global order. One
//! process holding the whole batch runs the same loop, so the sums have the same bits on any
//! number of processes.

use std::sync::Arc;

use candle_core::Result;
use simplecnn_collective::{fold_in_order, fold_partials, Collective, SingleProcess, Summand};

/// Images per partial sum over a batch. Fixed, so the order of the additions (and so the
/// result, to the bit) depends on neither the thread count nor the process count.
pub(crate) const GROUP_CHUNK: usize = 8;

/// At most this many partial kernel gradients per op: each is a kernel's size (2.4 MB for a
/// 256→256 3x3 convolution), and a batch of 1024 in chunks of 8 would otherwise hold 128.
const MAX_PARTIALS: usize = 16;

/// Images per partial weight gradient in a global batch of `n`: whole chunks of
/// [`GROUP_CHUNK`], at most [`MAX_PARTIALS`] partials. It depends on the global batch size
/// only (batches up to 128 sum exactly as chunks of 8 did before).
pub fn images_per_partial(n: usize) -> usize {
    GROUP_CHUNK * n.div_ceil(GROUP_CHUNK).div_ceil(MAX_PARTIALS).max(1)
}

/// This process' place in a step's global batch, and the processes to fold partials with.
#[derive(Clone)]
pub struct BatchShard {
    /// The global batch's size; `None`: the batch an op sees is the whole batch.
    global: Option<usize>,
    /// The global position of this process' first image (a multiple of the partial size).
    first: usize,
    collective: Arc<dyn Collective>,
}

impl std::fmt::Debug for BatchShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchShard")
            .field("global", &self.global)
            .field("first", &self.first)
            .field("processes", &self.collective.size())
            .finish()
    }
}

impl BatchShard {
    /// One process holding the whole batch: what every caller outside a data-parallel run
    /// passes.
    pub fn whole() -> Self {
        Self {
            global: None,
            first: 0,
            collective: Arc::new(SingleProcess),
        }
    }

    /// Images `first..first + n` of a global batch of `global`, with the other processes
    /// of `collective` holding the rest.
    pub fn new(global: usize, first: usize, collective: Arc<dyn Collective>) -> Self {
        Self {
            global: Some(global),
            first,
            collective,
        }
    }

    /// The processes sharing the batch.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// The global batch's size, given the `local` images an op sees.
    pub fn global(&self, local: usize) -> usize {
        self.global.unwrap_or(local)
    }

    /// Checks that `local` images at this shard's place are whole groups of `group` images
    /// (the last may be short only at the end of the global batch).
    pub(crate) fn check(&self, op: &str, local: usize, group: usize) -> Result<()> {
        let global = self.global(local);
        let end = self.first + local;
        if !self.first.is_multiple_of(group)
            || end > global
            || (!end.is_multiple_of(group) && end != global)
        {
            candle_core::bail!(
                "{op}: images {}..{end} of a batch of {global} are not whole groups of {group}",
                self.first
            );
        }
        Ok(())
    }

    /// Every process' `partials` (each `len` long) added in the global order, from zero.
    pub(crate) fn fold<T: Summand>(&self, partials: &[Vec<T>], len: usize) -> Result<Vec<T>> {
        fold_partials(self.collective.as_ref(), partials, len)
            .map_err(|e| candle_core::Error::Msg(format!("combining partial sums: {e}")))
    }

    /// The global sum of `len` values, `add_mine` adding this process' groups in order to
    /// the running sum of the processes before it (which need not hold its partials whole).
    pub(crate) fn fold_with<T: Summand>(
        &self,
        len: usize,
        add_mine: &mut dyn FnMut(&mut [T]),
    ) -> Result<Vec<T>> {
        fold_in_order(self.collective.as_ref(), len, add_mine)
            .map_err(|e| candle_core::Error::Msg(format!("combining partial sums: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_size_depends_on_the_global_batch_only() {
        assert_eq!(images_per_partial(128), 8);
        assert_eq!(images_per_partial(129), 16);
        assert_eq!(images_per_partial(1024), 64);
        assert_eq!(images_per_partial(1), 8);
    }

    #[test]
    fn shards_must_be_whole_groups() {
        let c: Arc<dyn Collective> = Arc::new(SingleProcess);
        assert!(BatchShard::new(24, 8, c.clone()).check("op", 16, 8).is_ok());
        assert!(BatchShard::new(20, 16, c.clone()).check("op", 4, 8).is_ok());
        let err = BatchShard::new(24, 4, c.clone())
            .check("op", 8, 8)
            .unwrap_err();
        assert!(err.to_string().contains("not whole groups"), "{err}");
        assert!(BatchShard::new(24, 8, c).check("op", 4, 8).is_err());
        assert!(BatchShard::whole().check("op", 13, 8).is_ok());
    }
}
