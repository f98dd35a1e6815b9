//! What an op's forward pass leaves for its backward pass or its caller: candle hands custom
//! ops over by reference and returns one tensor, so anything else goes through a lock.

use std::sync::Mutex;

use candle_core::Result;

/// A value one side puts once and the other takes once.
pub(crate) struct Handoff<T>(Mutex<Option<T>>);

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff(Mutex::new(None))
    }
}

impl<T> Handoff<T> {
    /// Leaves `value`, replacing any left before.
    pub fn put(&self, value: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    /// The value left, if any, leaving nothing.
    pub fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The value left, or an error naming `op` and saying what was missing.
    pub fn expect(&self, op: &str, missing: &str) -> Result<T> {
        match self.take() {
            Some(value) => Ok(value),
            None => candle_core::bail!("{op}: {missing}"),
        }
    }

    /// What the forward pass left for the backward pass of `op`.
    pub fn left_by_forward(&self, op: &str) -> Result<T> {
        self.expect(op, "backward ran twice or before the forward")
    }
}
