//! Sweep files: one experiment run many times, over seeds and a grid of `--set` values.
//!
//! ```toml
//! name = "resnet20-lr"          # optional: the file's stem
//! experiment = "resnet20"       # a name, a .toml or a run's config.json, as `experiment` takes
//! seeds = [0, 1, 2]             # fit.seed of each run (optional)
//! set = ["fit.epochs=2"]        # overrides every run gets (optional)
//!
//! [[grid]]                      # what varies, slowest first (optional)
//! key = "optimizer.learning_rate"
//! values = [0.05, 0.1]
//! ```
//!
//! The runs are numbered in a fixed order: the grid's settings in odometer order (the first
//! key changes slowest), and within a setting the seeds in the file's order. Run `i` is
//! setting `i / seeds` with seed `i % seeds`, so an index names the same run wherever the file
//! is expanded: on this machine, in a Slurm array task, in the summary.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{check_dir_from_file, sets_key, ExperimentError, Result};

/// At most this many runs in one sweep: an index is a Slurm array index (whose default
/// `MaxArraySize` is 1001), and a grid written by mistake as a product of long lists should
/// be refused, not expanded.
pub const MAX_RUNS: usize = 100_000;

/// A sweep file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: Option<String>,
    experiment: String,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    set: Vec<String>,
    #[serde(default)]
    grid: Vec<GridAxis>,
}

/// One key of the grid and the values it takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridAxis {
    key: String,
    values: Vec<toml::Value>,
}

/// A sweep, read and checked: everything needed to expand it.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The sweep's name: its folder under `sweeps/` and the tag its runs carry.
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// The experiment every run starts from, as the `experiment` command takes it.
    pub experiment: String,
    /// `fit.seed` of each run of a setting; empty: the experiment's own seed, one run a setting.
    pub seeds: Vec<u64>,
    /// Overrides every run gets, before the grid's and the seed's.
    pub set: Vec<String>,
    /// The grid's keys and, for each, its values as overrides' right-hand sides (TOML).
    pub grid: Vec<(String, Vec<String>)>,
}

/// One run of a sweep: its index and what makes it that run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRun {
    /// The sweep's name.
    pub sweep: String,
    /// The run's number, `0..sweep.len()`.
    pub index: usize,
    /// The setting's number, `0..sweep.settings()`.
    pub setting: usize,
    /// The grid's `(key, value)` pairs of the setting, in the grid's order.
    pub values: Vec<(String, String)>,
    /// The seed, when the sweep lists seeds.
    pub seed: Option<u64>,
    /// Every override of the run, in the order they are applied (the sweep's `set`, the
    /// setting's values, the seed): what the run's `config.json` records, and what tells a run
    /// of this sweep from one of an edited file of the same name.
    pub overrides: Vec<String>,
}

impl Sweep {
    /// Reads and checks a sweep file; nothing about the experiment is read yet.
    pub fn load(file: &Path) -> Result<Sweep> {
        Sweep::from_text(&crate::read_file(file)?, file)
    }

    /// [`Sweep::load`] for text `file` names.
    pub fn from_text(text: &str, file: &Path) -> Result<Sweep> {
        let err = |key: Option<&str>, message: String| ExperimentError {
            file: file.to_path_buf(),
            key: key.map(str::to_string),
            message,
        };
        let raw: SweepFile = toml::from_str(text).map_err(|e| err(None, e.to_string()))?;
        let name = match raw.name {
            Some(name) => name,
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !is_sweep_name(&name) {
            return Err(err(
                Some("name"),
                format!(
                    "{name:?} is not a plain name (letters, digits, '-', '_', '.'; no folders)"
                ),
            ));
        }
        for (i, o) in raw.set.iter().enumerate() {
            let key = format!("set.{i}");
            let (k, v) = o.split_once('=').ok_or_else(|| {
                err(
                    Some(&key),
                    format!("{o:?} is not key=value (e.g. fit.epochs=2)"),
                )
            })?;
            if sets_key(o, "outputs.dir") {
                check_dir_from_file(crate::parse_value(v.trim()).as_str().unwrap_or(v.trim()))
                    .map_err(|m| err(Some(&key), m))?;
            }
            if k.trim().is_empty() {
                return Err(err(Some(&key), "empty key".into()));
            }
        }
        let mut grid = Vec::with_capacity(raw.grid.len());
        let mut runs: usize = raw.seeds.len().max(1);
        for (i, axis) in raw.grid.iter().enumerate() {
            let key = format!("grid.{i}");
            let k = axis.key.trim();
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(err(Some(&key), format!("key {:?} is not a.b.c", axis.key)));
            }
            if k == "outputs" || k.starts_with("outputs.") {
                return Err(err(
                    Some(&key),
                    "the grid may not vary outputs: a sweep's runs go where the experiment's go"
                        .into(),
                ));
            }
            if k == "fit.seed" && !raw.seeds.is_empty() {
                return Err(err(
                    Some(&key),
                    "fit.seed is what `seeds` varies: list the seeds there".into(),
                ));
            }
            if grid.iter().any(|(g, _): &(String, _)| g == k) {
                return Err(err(Some(&key), format!("{k} is in the grid twice")));
            }
            if axis.values.is_empty() {
                return Err(err(Some(&key), format!("{k} has no values")));
            }
            runs = runs.saturating_mul(axis.values.len());
            // As overrides' right-hand sides: TOML (`0.1`, `"adam"`, `[1, 2]`).
            let values = axis.values.iter().map(toml::Value::to_string).collect();
            grid.push((k.to_string(), values));
        }
        if runs > MAX_RUNS {
            return Err(err(
                Some("grid"),
                format!("expands to {runs} runs, more than the {MAX_RUNS} a sweep may have"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(s) = raw.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(err(Some("seeds"), format!("seed {s} is listed twice")));
        }
        Ok(Sweep {
            name,
            file: file.to_path_buf(),
            experiment: raw.experiment,
            seeds: raw.seeds,
            set: raw.set,
            grid,
        })
    }

    /// How many settings the grid makes (1 without a grid).
    pub fn settings(&self) -> usize {
        self.grid.iter().map(|(_, v)| v.len()).product()
    }

    /// How many runs the sweep makes.
    pub fn len(&self) -> usize {
        self.settings() * self.seeds.len().max(1)
    }

    /// Whether the sweep makes no runs (never, for a sweep that loaded).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys an override from the command line may not set: what the sweep varies.
    pub fn varied_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.grid.iter().map(|(k, _)| k.as_str()).collect();
        if !self.seeds.is_empty() {
            keys.push("fit.seed");
        }
        keys
    }

    /// Run `index` (`0..len()`), or `None` past the end.
    pub fn run(&self, index: usize) -> Option<SweepRun> {
        if index >= self.len() {
            return None;
        }
        let per_setting = self.seeds.len().max(1);
        let setting = index / per_setting;
        let seed = self.seeds.get(index % per_setting).copied();
        // Odometer order: the last key changes fastest.
        let mut rest = setting;
        let mut values = vec![(String::new(), String::new()); self.grid.len()];
        for (slot, (key, options)) in values.iter_mut().zip(&self.grid).rev() {
            *slot = (key.clone(), options[rest % options.len()].clone());
            rest /= options.len();
        }
        let mut overrides = self.set.clone();
        overrides.extend(values.iter().map(|(k, v)| format!("{k}={v}")));
        overrides.extend(seed.map(|s| format!("fit.seed={s}")));
        Some(SweepRun {
            sweep: self.name.clone(),
            index,
            setting,
            values,
            seed,
            overrides,
        })
    }

    /// Every run, in index order.
    pub fn runs(&self) -> impl Iterator<Item = SweepRun> + '_ {
        (0..self.len()).filter_map(|i| self.run(i))
    }

    /// Refuses command-line overrides that set what the sweep varies.
    pub fn check_overrides(&self, overrides: &[String]) -> Result<()> {
        for o in overrides {
            if let Some(k) = self.varied_keys().into_iter().find(|k| sets_key(o, k)) {
                return Err(ExperimentError {
                    file: self.file.clone(),
                    key: Some(k.to_string()),
                    message: format!(
                        "the sweep varies it; `{o}` on the command line would make its runs alike"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Letters, digits, '-', '_' and '.' (not only dots): a folder name, a Slurm job name and a
/// word in a shell script alike, with nothing to quote.
fn is_sweep_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().any(|c| c != '.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Result<Sweep> {
        Sweep::from_text(text, Path::new("sweeps/s.toml"))
    }

    #[test]
    fn runs_are_settings_in_odometer_order_then_seeds() {
        let s = sweep(
            r#"
            experiment = "baseline"
            seeds = [7, 3]
            set = ["fit.epochs=1"]
            [[grid]]
            key = "optimizer.learning_rate"
            values = [0.1, 0.2]
            [[grid]]
            key = "fit.batch_size"
            values = [32, 64, 128]
            "#,
        )
        .unwrap();
        assert_eq!(s.name, "s");
        assert_eq!((s.settings(), s.len()), (6, 12));
        let r = s.run(7).unwrap();
        // Setting 3: learning rate 0.2 (index 1), batch size 32 (index 0); seed 3.
        assert_eq!(r.setting, 3);
        assert_eq!(r.seed, Some(3));
        assert_eq!(
            r.overrides,
            [
                "fit.epochs=1",
                "optimizer.learning_rate=0.2",
                "fit.batch_size=32",
                "fit.seed=3"
            ]
        );
        assert_eq!(s.run(5).unwrap().values[1].1, "128");
        assert!(s.run(12).is_none());
        let all: Vec<usize> = s.runs().map(|r| r.index).collect();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_sweep_without_grid_or_seeds_is_one_run() {
        let s = sweep("experiment = \"baseline\"").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.run(0).unwrap().overrides, Vec::<String>::new());
        let s = sweep("experiment = \"baseline\"\nseeds = [0, 1, 2]").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.run(2).unwrap().overrides, ["fit.seed=2"]);
    }

    #[test]
    fn values_keep_their_toml_types() {
        let s = sweep(
            r#"
            experiment = "baseline"
            [[grid]]
            key = "optimizer.kind"
            values = ["adam", "sgd"]
            "#,
        )
        .unwrap();
        assert_eq!(s.run(1).unwrap().overrides, ["optimizer.kind=\"sgd\""]);
    }

    #[test]
    fn bad_sweeps_are_refused_naming_the_key() {
        let cases = [
            ("experiment = \"b\"\nname = \"../x\"", "name"),
            (
                "experiment = \"b\"\nset = [\"outputs.dir=/tmp/x\"]",
                "set.0",
            ),
            (
                "experiment = \"b\"\nset = [\"outputs.dir='../x'\"]",
                "set.0",
            ),
            ("experiment = \"b\"\nset = [\"fit.epochs\"]", "set.0"),
            (
                "experiment = \"b\"\n[[grid]]\nkey = \"outputs.dir\"\nvalues = [\"a\"]",
                "grid.0",
            ),
            (
                "experiment = \"b\"\n[[grid]]\nkey = \"fit.epochs\"\nvalues = []",
                "grid.0",
            ),
            (
                "experiment = \"b\"\n[[grid]]\nkey = \"fit..x\"\nvalues = [1]",
                "grid.0",
            ),
            (
                "experiment = \"b\"\nseeds = [1]\n[[grid]]\nkey = \"fit.seed\"\nvalues = [1]",
                "grid.0",
            ),
            ("experiment = \"b\"\nseeds = [1, 2, 1]", "seeds"),
        ];
        for (text, key) in cases {
            let e = sweep(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
        let e = sweep("experiment = \"b\"\nunknown = 1").unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
    }

    #[test]
    fn a_grid_too_large_is_refused_before_expanding() {
        let values: Vec<String> = (0..1000).map(|v| v.to_string()).collect();
        let axis = |k: &str| format!("[[grid]]\nkey = \"{k}\"\nvalues = [{}]\n", values.join(","));
        let text = format!("experiment = \"b\"\n{}{}", axis("a.b"), axis("a.c"));
        let e = sweep(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("grid"), "{e}");
    }

    #[test]
    fn the_command_line_may_not_set_what_the_sweep_varies() {
        let s = sweep(
            "experiment = \"b\"\nseeds = [1, 2]\n[[grid]]\nkey = \"optimizer.learning_rate\"\nvalues = [1]",
        )
        .unwrap();
        assert!(s.check_overrides(&["fit.epochs=2".into()]).is_ok());
        assert!(s.check_overrides(&["fit.seed=3".into()]).is_err());
        assert!(s.check_overrides(&["optimizer={}".into()]).is_err());
    }

    /// Every sweep in the repository's sweeps/ reads, and so does every run's experiment.
    #[test]
    fn the_stock_sweeps_load_with_every_run() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sweeps");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        for file in files {
            let s = Sweep::load(&file).unwrap();
            let (_, text) = crate::BUILT_IN
                .iter()
                .find(|(n, _)| *n == s.experiment)
                .unwrap_or_else(|| panic!("{}: {} is not built in", file.display(), s.experiment));
            for run in s.runs() {
                let e = crate::load_text(text, Path::new("x.toml"), &run.overrides)
                    .unwrap_or_else(|e| panic!("{}: run {}: {e}", file.display(), run.index));
                if let Some(seed) = run.seed {
                    assert_eq!(e.experiment.fit.seed, seed);
                }
            }
        }
    }
}
