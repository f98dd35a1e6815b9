//! An event file being written: TensorFlow 2's name and first event, summaries in the tensor
//! form Keras 3 writes (scalars, histograms, PNG images), flushed when asked.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::proto::*;
use crate::record::{read_records, write_record};

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host name as a file-name part.
fn host_name() -> String {
    simplecnn_files::host_name()
        .unwrap_or_else(|| "localhost".into())
        .replace(['/', '\\'], "_")
}

/// Whether `path` is an event file by its name (`events.out.tfevents.…`).
pub fn is_event_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("events.out.tfevents."))
}

/// Every event of an event file, in order, with its framing's CRCs checked.
pub fn read_events(path: &Path) -> io::Result<Vec<Event>> {
    let bytes = simplecnn_files::read(path)?;
    read_records(&bytes)?
        .iter()
        .map(|r| {
            Event::decode(r.as_slice())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        })
        .collect()
}

/// An event file being written in a log folder (`logs/train/`).
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (made if needed), named as TensorFlow 2 names them
    /// (`events.out.tfevents.<seconds>.<host>.<pid>.<n>.v2`), starting with the file version.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir)?;
        let now = wall_time();
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}.v2",
            now as u64,
            host_name(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut writer = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        writer.write_event(&Event {
            wall_time: now,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// Continues the logs in `dir` after a resume: the events of this folder's event files for
    /// which `keep` holds (those before the step training resumes from) are copied into a new
    /// file that the writer then appends to, and the old files are removed, so TensorBoard
    /// shows one curve without the steps that are done again. Files other than event files are
    /// left alone.
    pub fn continue_in(dir: &Path, keep: impl Fn(&Event) -> bool) -> io::Result<EventWriter> {
        let mut old: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_event_file(p))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        old.sort();
        let mut kept = Vec::new();
        for path in &old {
            let events = read_events(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            kept.extend(
                events
                    .into_iter()
                    .filter(|e| matches!(e.what, Some(What::Summary(_))) && keep(e)),
            );
        }
        let mut writer = EventWriter::create(dir)?;
        for event in &kept {
            writer.write_event(event)?;
        }
        writer.flush()?;
        for path in old {
            std::fs::remove_file(&path)?;
        }
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        write_record(&mut self.out, &event.encode_to_vec())
    }

    fn write_value(&mut self, step: i64, value: SummaryValue) -> io::Result<()> {
        self.write_event(&Event {
            wall_time: wall_time(),
            step,
            what: Some(What::Summary(Summary { value: vec![value] })),
        })
    }

    /// `tf.summary.scalar(tag, value, step)`: a float32 scalar tensor for the scalars plugin.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> io::Result<()> {
        self.write_value(
            step,
            SummaryValue {
                tag: tag.into(),
                tensor: Some(TensorProto {
                    dtype: DT_FLOAT,
                    tensor_shape: Some(TensorShapeProto { dim: vec![] }),
                    float_val: vec![value as f32],
                    ..Default::default()
                }),
                metadata: Some(metadata("scalars", DATA_CLASS_SCALAR)),
                ..Default::default()
            },
        )
    }

    /// `tf.summary.histogram(tag, values, step)`: `buckets` equal-width buckets over the
    /// values' range as a `[buckets, 3]` float64 tensor of (left edge, right edge, count), the
    /// histograms plugin's form (TensorBoard's default is 30 buckets).
    pub fn histogram(
        &mut self,
        tag: &str,
        step: i64,
        values: &[f32],
        buckets: usize,
    ) -> io::Result<()> {
        let rows = histogram_rows(values, buckets);
        let mut content = Vec::with_capacity(rows.len() * 24);
        for v in rows.iter().flatten() {
            content.extend_from_slice(&v.to_le_bytes());
        }
        self.write_value(
            step,
            SummaryValue {
                tag: tag.into(),
                tensor: Some(TensorProto {
                    dtype: DT_DOUBLE,
                    tensor_shape: Some(TensorShapeProto {
                        dim: vec![
                            Dim {
                                size: rows.len() as i64,
                            },
                            Dim { size: 3 },
                        ],
                    }),
                    tensor_content: content,
                    ..Default::default()
                }),
                metadata: Some(metadata("histograms", DATA_CLASS_TENSOR)),
                ..Default::default()
            },
        )
    }

    /// `tf.summary.image(tag, [image], step)` of one PNG: a string tensor of width, height and
    /// the encoded image, the images plugin's form.
    pub fn png_image(
        &mut self,
        tag: &str,
        step: i64,
        png: &[u8],
        width: u32,
        height: u32,
    ) -> io::Result<()> {
        self.write_value(
            step,
            SummaryValue {
                tag: tag.into(),
                tensor: Some(TensorProto {
                    dtype: DT_STRING,
                    tensor_shape: Some(TensorShapeProto {
                        dim: vec![Dim { size: 3 }],
                    }),
                    string_val: vec![
                        width.to_string().into_bytes(),
                        height.to_string().into_bytes(),
                        png.to_vec(),
                    ],
                    ..Default::default()
                }),
                metadata: Some(metadata("images", DATA_CLASS_BLOB_SEQUENCE)),
                ..Default::default()
            },
        )
    }

    /// Everything written so far reaches the file (a run is watched live).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn metadata(plugin: &str, data_class: i32) -> SummaryMetadata {
    SummaryMetadata {
        plugin_data: Some(PluginData {
            plugin_name: plugin.into(),
            content: Vec::new(),
        }),
        data_class,
        ..Default::default()
    }
}

/// (left, right, count) of `buckets` equal-width buckets from the smallest to the largest
/// finite value; all values equal: one bucket around them, as TensorBoard's own summary does.
fn histogram_rows(values: &[f32], buckets: usize) -> Vec<[f64; 3]> {
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    if finite.is_empty() {
        return Vec::new();
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo == hi {
        return vec![[lo - 0.5, hi + 0.5, finite.len() as f64]];
    }
    let buckets = buckets.max(1);
    let width = (hi - lo) / buckets as f64;
    let mut counts = vec![0.0f64; buckets];
    for v in finite {
        let i = (((v - lo) / width) as usize).min(buckets - 1);
        counts[i] += 1.0;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| [lo + i as f64 * width, lo + (i + 1) as f64 * width, c])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summaries(path: &Path) -> Vec<(i64, SummaryValue)> {
        read_events(path)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.what {
                Some(What::Summary(s)) => Some((e.step, s.value.into_iter().next().unwrap())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn scalars_histograms_and_images_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("epoch_loss", 0, 2.5).unwrap();
        w.histogram("dense_1/kernel/histogram", 0, &[0.0, 1.0, 1.0, 3.0], 3)
            .unwrap();
        w.png_image("confusion", 1, b"\x89PNG", 4, 2).unwrap();
        w.flush().unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let s = summaries(w.path());
        assert_eq!(s[0].1.scalar(), Some(2.5));
        assert_eq!(s[0].1.plugin(), Some("scalars"));
        let h = s[1].1.tensor.as_ref().unwrap();
        let values: Vec<f64> = h
            .tensor_content
            .chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, vec![0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 1.0]);
        assert_eq!(s[2].0, 1);
        assert_eq!(s[2].1.tensor.as_ref().unwrap().string_val[2], b"\x89PNG");
        assert!(w
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with(".v2"));
    }

    #[test]
    fn continuing_keeps_the_steps_before_the_resume_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 0..4 {
            w.scalar("epoch_loss", step, step as f64).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let mut w = EventWriter::continue_in(dir.path(), |e| e.step < 2).unwrap();
        w.scalar("epoch_loss", 2, 20.0).unwrap();
        w.flush().unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| is_event_file(p))
            .collect();
        assert_eq!(files.len(), 1);
        let steps: Vec<(i64, Option<f64>)> = summaries(&files[0])
            .into_iter()
            .map(|(s, v)| (s, v.scalar()))
            .collect();
        assert_eq!(steps, vec![(0, Some(0.0)), (1, Some(1.0)), (2, Some(20.0))]);
        assert!(dir.path().join("notes.txt").is_file());
    }

    #[test]
    fn a_damaged_event_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("epoch_loss", 0, 1.0).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = EventWriter::continue_in(dir.path(), |_| true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("events.out.tfevents") && err.contains("CRC"),
            "{err}"
        );
    }
}
