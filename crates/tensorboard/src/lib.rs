//! TensorBoard's event files, written as TensorFlow 2 (and so Keras 3's `TensorBoard`
//! callback) writes them: TFRecord framing with masked CRC-32C around `Event` protobufs, the
//! first event the file version, summaries in the tensor form with the plugin that shows
//! them (scalars, histograms, images). The protobuf messages are derived by hand with prost
//! (no `protoc`); the files are read back (CRCs checked) to continue a resumed run's logs.

mod proto;
mod record;
mod writer;

pub use proto::{Event, Summary, SummaryValue, What};
pub use writer::{is_event_file, read_events, EventWriter};
