//! The processes one run trains on: this one alone, or the ranks `mpirun -np N` (or `srun`)
//! started, which the MPI launcher's environment announces. Rank 0 leads: it alone writes
//! the run folder and prints; every rank trains.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use serde::Serialize;
use simplecnn_collective::{launch::Launch, Collective, SingleProcess};

/// What `config.json` records of a run on several processes.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessesRecord {
    pub count: usize,
    /// The MPI library and its version.
    pub implementation: String,
}

/// This program's processes, once started (MPI may be initialised only once per process).
static WORLD: Mutex<Option<Arc<dyn Collective>>> = Mutex::new(None);

/// This program's processes, started on first use.
pub fn world() -> Result<Arc<dyn Collective>> {
    let mut world = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = world.as_ref() {
        return Ok(w.clone());
    }
    let started = start(Launch::from_env())?;
    *world = Some(started.clone());
    Ok(started)
}

/// Ends this process' part in a run: on success MPI is finalised (every process must); a
/// process that failed while others may still wait for it ends them all with `code`.
pub fn finish(failed: Option<i32>) {
    let world = WORLD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let (Some(w), Some(code)) = (&world, failed) {
        if w.size() > 1 {
            w.abort(code);
        }
    }
    // The last reference finalises MPI (the run's model, holding another, is gone by now).
    drop(world);
}

fn start(launch: Launch) -> Result<Arc<dyn Collective>> {
    match launch {
        Launch::Alone | Launch::Mpi(1) => Ok(Arc::new(SingleProcess)),
        Launch::SrunWithoutMpi(n) => bail!(
            "srun started {n} tasks without an MPI plugin, so each would train a run of its \
             own: start them with `srun --mpi=pmix` (Open MPI; `--mpi=pmi2` for an MPICH \
             build), or ask for one task"
        ),
        Launch::Mpi(_) | Launch::Pmix => start_mpi(),
    }
}

#[cfg(feature = "mpi")]
fn start_mpi() -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(simplecnn_collective::mpi_world::MpiWorld::start()?))
}

#[cfg(not(feature = "mpi"))]
fn start_mpi() -> Result<Arc<dyn Collective>> {
    bail!(
        "started by an MPI launcher, but this simplecnn was built without MPI: build it with \
         `cargo build --release -p simplecnn-cli --features mpi` (after `cargo xtask setup`)"
    )
}

/// The record for `config.json`: none for one process.
pub fn record(world: &dyn Collective) -> Option<ProcessesRecord> {
    (world.size() > 1).then(|| ProcessesRecord {
        count: world.size(),
        implementation: world.describe(),
    })
}

/// Refuses a run whose processes would not train the same run: each sends `fingerprint`
/// (its program and resolved experiment), and any that differs from rank 0's is named.
pub fn check_same_run(world: &dyn Collective, fingerprint: &[u8]) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let all = world.all_gather_bytes(fingerprint)?;
    let differ: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, f)| *f != &all[0])
        .map(|(rank, _)| rank.to_string())
        .collect();
    if !differ.is_empty() {
        bail!(
            "rank(s) {} run another program or experiment than rank 0 (commit, build or \
             settings differ); start every process from the same build and experiment file",
            differ.join(", ")
        );
    }
    Ok(())
}

/// Every process' `mine` (its CPU-seconds), in rank order.
pub fn each_process(world: &dyn Collective, mine: f64) -> Result<Vec<f64>> {
    Ok(world
        .all_gather_f64(&[mine])?
        .into_iter()
        .flatten()
        .collect())
}

/// Rank 0's `value` on every process (the run folder it made).
pub fn from_lead(world: &dyn Collective, value: &str) -> Result<String> {
    if world.size() == 1 {
        return Ok(value.to_string());
    }
    let all = world.all_gather_bytes(value.as_bytes())?;
    Ok(String::from_utf8_lossy(&all[0]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use simplecnn_collective::threads::ThreadWorld;

    #[test]
    fn srun_without_an_mpi_plugin_is_refused() {
        let refused = start(Launch::SrunWithoutMpi(2)).err().unwrap().to_string();
        assert!(refused.contains("--mpi=pmix"), "{refused}");
    }

    #[test]
    fn a_rank_with_another_fingerprint_is_named() {
        let results = ThreadWorld::run(3, |rank| {
            let print = if rank.rank() == 2 { "b" } else { "a" };
            check_same_run(&rank, print.as_bytes())
        });
        for r in results {
            let err = r.unwrap_err().to_string();
            assert!(err.starts_with("rank(s) 2 run another"), "{err}");
        }
    }

    #[test]
    fn every_rank_gets_the_leads_folder() {
        let got = ThreadWorld::run(2, |rank| {
            let mine = format!("folder-{}", rank.rank());
            from_lead(&rank, &mine).unwrap()
        });
        assert_eq!(got, ["folder-0", "folder-0"]);
    }
}
