//! Stopping a run politely: SIGINT (Ctrl-C) and SIGTERM (`kill`, Slurm's `scancel`,
//! Kubernetes) are noted by a handler and acted on at the next batch's end, so the run's folder
//! stays resumable (still marked incomplete; the last finished epoch's checkpoint whole, as
//! checkpoints are written only between epochs). A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal received (0: none), and whether one was.
struct Received {
    signal: Arc<AtomicUsize>,
    any: Arc<AtomicBool>,
}

static RECEIVED: OnceLock<Received> = OnceLock::new();

/// Installs the handlers (once; later calls do nothing). Until then signals keep their default
/// effect (the process ends at once), which is right for the commands that hold nothing
/// worth keeping.
pub fn install() -> anyhow::Result<()> {
    if RECEIVED.get().is_some() {
        return Ok(());
    }
    let received = Received {
        signal: Arc::new(AtomicUsize::new(0)),
        any: Arc::new(AtomicBool::new(false)),
    };
    for sig in [SIGINT, SIGTERM] {
        // Runs before the flag is set below: it ends the process only on a second signal.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            128 + sig,
            Arc::clone(&received.any),
        )?;
        signal_hook::flag::register_usize(sig, Arc::clone(&received.signal), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&received.any))?;
    }
    let _ = RECEIVED.set(received);
    Ok(())
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    let r = RECEIVED.get()?;
    match r.any.load(Ordering::SeqCst) {
        true => Some(r.signal.load(Ordering::SeqCst) as i32),
        false => None,
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A run ended by a signal: `main` prints it and exits with 128 + the signal (130, 143), as a
/// shell does for a process the signal killed.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// How to go on (the resume command), when the run can be resumed.
    pub resume: String,
}

impl Interrupted {
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {}; {}",
            signal_name(self.signal),
            self.resume
        )
    }
}

impl std::error::Error for Interrupted {}

/// Ends training at the next batch's end once a signal came (an error `fit` returns at once).
pub struct StopOnSignal;

impl simplecnn_train::Callback for StopOnSignal {
    fn on_batch_end(
        &mut self,
        _: &simplecnn_train::callbacks::BatchEnd<'_>,
    ) -> simplecnn_train::Result<simplecnn_train::Control> {
        match received() {
            Some(sig) => Err(simplecnn_train::TrainError::Stopped(
                signal_name(sig).to_string(),
            )),
            None => Ok(simplecnn_train::Control::Continue),
        }
    }
}
