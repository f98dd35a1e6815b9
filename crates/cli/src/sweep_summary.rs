//! A sweep's summary: per setting, the mean, sample standard deviation, minimum and maximum of
//! the test metrics over the runs that finished (their `test.json` and `run.json`), as CSV and
//! as a markdown table.

use std::path::Path;

use anyhow::{Context, Result};
use simplecnn_experiment::Sweep;

use crate::sweep::{Member, RunState};

/// What one finished run scored.
struct Scores {
    accuracy: f64,
    loss: f64,
    top_k: usize,
    top_k_accuracy: f64,
    /// `(loss, accuracy)` without test-time augmentation, when the run used it.
    without_tta: Option<(f64, f64)>,
    wall_seconds: Option<f64>,
}

impl Scores {
    fn read(dir: &Path) -> Result<Scores> {
        let test = dir.join("test.json");
        let text = simplecnn_files::read_to_string(&test)
            .with_context(|| format!("cannot read {}", test.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}", test.display()))?;
        let number = |key: &str| {
            v[key]
                .as_f64()
                .with_context(|| format!("{}: no number {key:?}", test.display()))
        };
        let without_tta = v["without_tta"]
            .as_array()
            .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
        let wall_seconds = simplecnn_files::read_to_string(&dir.join("run.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|r| r["wall_seconds"].as_f64());
        Ok(Scores {
            accuracy: number("accuracy")?,
            loss: number("loss")?,
            top_k: number("top_k")? as usize,
            top_k_accuracy: number("top_k_accuracy")?,
            without_tta,
            wall_seconds,
        })
    }
}

/// Mean, sample standard deviation (n − 1; none for one value), minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stats {
            n,
            mean,
            std,
            min,
            max,
        })
    }
}

/// One setting of the grid and what its finished runs scored.
struct Row {
    setting: usize,
    values: Vec<(String, String)>,
    expected: usize,
    finished: usize,
    accuracy: Option<Stats>,
    loss: Option<Stats>,
    top_k: Option<usize>,
    top_k_accuracy: Option<Stats>,
    accuracy_without_tta: Option<Stats>,
    wall_seconds: Option<Stats>,
}

pub struct Summary {
    name: String,
    experiment: String,
    keys: Vec<String>,
    runs: usize,
    rows: Vec<Row>,
}

impl Summary {
    /// The summary of `members` (every run of `sweep`, with its state).
    pub fn of(sweep: &Sweep, members: &[Member]) -> Result<Summary> {
        let mut rows = Vec::new();
        for setting in 0..sweep.settings() {
            let of_setting: Vec<&Member> = members
                .iter()
                .filter(|m| m.run.setting == setting)
                .collect();
            let Some(first) = of_setting.first() else {
                continue;
            };
            let scores: Vec<Scores> = of_setting
                .iter()
                .filter_map(|m| match &m.state {
                    RunState::Finished(dir) => Some(Scores::read(dir)),
                    _ => None,
                })
                .collect::<Result<_>>()?;
            let stats = |f: &dyn Fn(&Scores) -> Option<f64>| {
                Stats::of(&scores.iter().filter_map(f).collect::<Vec<_>>())
            };
            rows.push(Row {
                setting,
                values: first.run.values.clone(),
                expected: of_setting.len(),
                finished: scores.len(),
                accuracy: stats(&|s| Some(s.accuracy)),
                loss: stats(&|s| Some(s.loss)),
                top_k: scores.first().map(|s| s.top_k),
                top_k_accuracy: stats(&|s| Some(s.top_k_accuracy)),
                accuracy_without_tta: stats(&|s| s.without_tta.map(|(_, a)| a)),
                wall_seconds: stats(&|s| s.wall_seconds),
            });
        }
        Ok(Summary {
            name: sweep.name.clone(),
            experiment: sweep.experiment.clone(),
            keys: sweep.grid.iter().map(|(k, _)| k.clone()).collect(),
            runs: members.len(),
            rows,
        })
    }

    /// A row per setting: its values, then `runs` and `*_mean`, `*_std`, `*_min`, `*_max` of
    /// each metric (empty where no run finished, or `std` of one run).
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_path(path)?;
        let metrics = [
            "accuracy",
            "loss",
            "top_k_accuracy",
            "accuracy_without_tta",
            "wall_seconds",
        ];
        let mut header: Vec<String> = vec!["setting".into()];
        header.extend(self.keys.iter().cloned());
        header.extend(["runs", "runs_planned", "top_k"].map(String::from));
        for m in metrics {
            header.extend(["mean", "std", "min", "max"].map(|s| format!("{m}_{s}")));
        }
        w.write_record(&header)?;
        let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for row in &self.rows {
            let mut record: Vec<String> = vec![row.setting.to_string()];
            record.extend(row.values.iter().map(|(_, v)| v.clone()));
            record.push(row.finished.to_string());
            record.push(row.expected.to_string());
            record.push(row.top_k.map(|k| k.to_string()).unwrap_or_default());
            for stats in [
                row.accuracy,
                row.loss,
                row.top_k_accuracy,
                row.accuracy_without_tta,
                row.wall_seconds,
            ] {
                record.push(number(stats.map(|s| s.mean)));
                record.push(number(stats.and_then(|s| s.std)));
                record.push(number(stats.map(|s| s.min)));
                record.push(number(stats.map(|s| s.max)));
            }
            w.write_record(&record)?;
        }
        w.flush()?;
        Ok(())
    }

    /// The table a README takes: accuracies in percent, mean ± std [min, max].
    pub fn markdown(&self) -> String {
        let finished: usize = self.rows.iter().map(|r| r.finished).sum();
        let mut text = format!(
            "# Sweep {}: experiment {}, {} runs, {finished} finished\n\n",
            self.name, self.experiment, self.runs
        );
        let top_k = self.rows.iter().find_map(|r| r.top_k).unwrap_or(5);
        text += &format!(
            "| setting | runs | test accuracy, mean ± std [min, max] | without TTA | test loss | \
             top-{top_k} accuracy | wall minutes |\n|---|---|---|---|---|---|---|\n"
        );
        for row in &self.rows {
            let setting = match row.values.is_empty() {
                true => "as written".to_string(),
                false => row
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            text += &format!(
                "| {setting} | {}/{} | {} | {} | {} | {} | {} |\n",
                row.finished,
                row.expected,
                with_range(row.accuracy, 100.0, 2),
                plain(row.accuracy_without_tta, 100.0, 2),
                plain(row.loss, 1.0, 4),
                plain(row.top_k_accuracy, 100.0, 2),
                plain(row.wall_seconds, 1.0 / 60.0, 1),
            );
        }
        text
    }
}

/// `mean ± std` scaled, `–` without values.
fn plain(stats: Option<Stats>, scale: f64, digits: usize) -> String {
    match stats {
        None => "–".into(),
        Some(s) => match s.std {
            Some(std) => format!("{:.digits$} ± {:.digits$}", s.mean * scale, std * scale),
            None => format!("{:.digits$}", s.mean * scale),
        },
    }
}

/// [`plain`] with `[min, max]`.
fn with_range(stats: Option<Stats>, scale: f64, digits: usize) -> String {
    match stats {
        Some(s) if s.n > 1 => format!(
            "{} [{:.digits$}, {:.digits$}]",
            plain(stats, scale, digits),
            s.min * scale,
            s.max * scale
        ),
        _ => plain(stats, scale, digits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_the_sample_statistics() {
        let s = Stats::of(&[0.9, 0.8, 0.7]).unwrap();
        assert!((s.mean - 0.8).abs() < 1e-12);
        // Sample standard deviation: sqrt((0.01 + 0 + 0.01) / 2) = 0.1.
        assert!((s.std.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.n), (0.7, 0.9, 3));
        let one = Stats::of(&[0.5]).unwrap();
        assert_eq!((one.mean, one.std), (0.5, None));
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn table_cells_show_what_there_is() {
        let s = Stats::of(&[0.9, 0.8]);
        assert_eq!(with_range(s, 100.0, 2), "85.00 ± 7.07 [80.00, 90.00]");
        assert_eq!(plain(Stats::of(&[0.5]), 100.0, 1), "50.0");
        assert_eq!(plain(None, 1.0, 1), "–");
    }
}
