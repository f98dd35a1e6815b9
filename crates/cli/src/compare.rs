//! `compare cpu cuda`: the baseline experiment, same seed and data, on each device; one folder
//! with both runs, a markdown table and both loss curves.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::style::{RGBColor, BLUE, CYAN, MAGENTA, RED};

use simplecnn_bench::median;

use crate::experiment::{self, DeviceArg, RunOutcome, Shorthands};
use crate::{plots, provenance};
use simplecnn_experiment::DeviceName;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Devices to run on, in order (the first is the one speed-ups are relative to).
    #[arg(required = true, value_enum)]
    pub devices: Vec<DeviceArg>,
    /// The experiment each device runs.
    #[arg(long, default_value = "baseline")]
    pub experiment: String,
    /// Sets any key of the experiment, as `experiment --set` does.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub recipe: Shorthands,
    #[arg(long, default_value = "results/compare")]
    pub out: PathBuf,
}

/// Why a device cannot run here, in one line; `None` when it can.
fn unavailable(device: DeviceName) -> Option<String> {
    match experiment::device(device) {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {e:#}", device.as_str())),
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    let mut overrides = args.set.clone();
    overrides.extend(args.recipe.overrides());
    // Checked before anything runs.
    experiment::load(&args.experiment, &overrides)?;
    let asked: Vec<DeviceName> = args.devices.iter().map(|d| d.name()).collect();
    let mut devices = Vec::new();
    for &d in &asked {
        if devices.contains(&d) {
            bail!("{} is named twice", d.as_str());
        }
        match unavailable(d) {
            Some(why) => println!("{why}; skipping it"),
            None => devices.push(d),
        }
    }
    if devices.is_empty() {
        bail!("none of the devices asked for can run here");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    let names: Vec<&str> = asked.iter().map(|d| d.as_str()).collect();
    let dir = experiment::create_unique_dir(
        &args.out,
        &format!("{}-{}", provenance::utc_stamp(), names.join("-")),
    )?;
    let mut outcomes = Vec::new();
    for &device in &devices {
        println!("== {} ==", device.as_str());
        let mut with_device = overrides.clone();
        with_device.push(format!("fit.device=\"{}\"", device.as_str()));
        let loaded = experiment::load(&args.experiment, &with_device)?;
        let outcome =
            experiment::run_experiment(loaded.experiment, Some(dir.join(device.as_str())))?;
        outcomes.push((device, outcome));
    }
    let skipped: Vec<String> = asked
        .iter()
        .filter(|d| !devices.contains(d))
        .filter_map(|&d| unavailable(d))
        .collect();
    let table = markdown(&outcomes, &skipped);
    crate::files::write_contents(&dir.join("compare.md"), &table)?;
    loss_plot(&dir.join("loss.png"), &outcomes)?;
    print!("{table}");
    println!("results in {}", dir.display());
    Ok(())
}

/// Median seconds per epoch, leaving out the first (warm-up, kernel compilation) when there
/// are more.
fn seconds_per_epoch(o: &RunOutcome) -> f64 {
    let secs: Vec<f64> = o.history.epochs.iter().map(|e| e.seconds).collect();
    match secs.len() {
        0 | 1 => median(secs),
        _ => median(secs[1..].to_vec()),
    }
}

fn markdown(outcomes: &[(DeviceName, RunOutcome)], skipped: &[String]) -> String {
    let m = provenance::collect();
    let Some(e) = outcomes.first().map(|(_, o)| &o.experiment) else {
        return String::new();
    };
    let mut s = format!(
        "# Experiment {} on {}\n\n\
         {} epoch(s), batch {}, seed {}{}; machine: {} ({} cores), host `{}`, commit `{}`.\n\n\
         | device | s/epoch (median) | train img/s | loss | acc | val_loss | val_acc | test loss | test acc | speed-up |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        e.name,
        outcomes
            .iter()
            .map(|(d, _)| d.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        e.fit.epochs,
        e.fit.batch_size,
        e.fit.seed,
        e.data
            .subset
            .map_or(String::new(), |n| format!(", first {n} training images")),
        m.cpu_model,
        m.cpu_cores,
        m.host,
        &m.git_commit[..m.git_commit.len().min(10)],
    );
    let first = outcomes.first().map(|(_, o)| seconds_per_epoch(o));
    for (device, o) in outcomes {
        let secs = seconds_per_epoch(o);
        let last = o.history.epochs.last();
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        s += &format!(
            "| {} | {:.1} | {:.0} | {} | {} | {} | {} | {:.4} | {:.4} | {:.2}x |\n",
            device.as_str(),
            secs,
            o.train_images as f64 / secs,
            f(last.map(|e| e.loss)),
            f(last.map(|e| e.acc)),
            f(last.and_then(|e| e.val_loss)),
            f(last.and_then(|e| e.val_acc)),
            o.test.loss,
            o.test.accuracy,
            first.map_or(1.0, |f| f / secs),
        );
    }
    if let Some((reference, first)) = outcomes.first() {
        for (device, o) in &outcomes[1..] {
            let gap = largest_gap(&first.history, &o.history)
                .map_or("- (not the same epochs)".into(), |g| format!("{g:.2e}"));
            s += &format!(
                "\nLargest gap in the per-epoch loss and val_loss, {} against {}: {gap}.\n",
                device.as_str(),
                reference.as_str(),
            );
        }
    }
    for line in skipped {
        s += &format!("\nNot run: {line}.\n");
    }
    s += "\nPer-epoch numbers: `<device>/epochs.csv`; both loss curves: `loss.png`.\n";
    s
}

/// The largest |a - b| between two runs' per-epoch `loss` and `val_loss`; `None` when they
/// did not run the same epochs.
fn largest_gap(a: &simplecnn_train::History, b: &simplecnn_train::History) -> Option<f64> {
    if a.epochs.len() != b.epochs.len() || a.epochs.is_empty() {
        return None;
    }
    let mut gap = 0f64;
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        gap = gap.max((x.loss - y.loss).abs());
        match (x.val_loss, y.val_loss) {
            (Some(u), Some(v)) => gap = gap.max((u - v).abs()),
            (None, None) => {}
            _ => return None,
        }
    }
    Some(gap)
}

fn loss_plot(path: &Path, outcomes: &[(DeviceName, RunOutcome)]) -> Result<()> {
    const COLOURS: [(RGBColor, RGBColor); 2] = [(BLUE, CYAN), (RED, MAGENTA)];
    let series: Vec<plots::Series> = outcomes
        .iter()
        .zip(COLOURS.iter().cycle())
        .flat_map(|((device, o), &(train, val))| {
            [
                plots::Series {
                    name: format!("{} loss", device.as_str()),
                    colour: train,
                    points: plots::pick(&o.history, |e| Some(e.loss)),
                },
                plots::Series {
                    name: format!("{} val_loss", device.as_str()),
                    colour: val,
                    points: plots::pick(&o.history, |e| e.val_loss),
                },
            ]
        })
        .collect();
    plots::chart(path, "Loss by device", "loss", &series)
}

#[cfg(test)]
mod tests {
    use super::largest_gap;
    use simplecnn_train::{EpochMetrics, History};

    fn history(losses: &[(f64, Option<f64>)]) -> History {
        History {
            epochs: losses
                .iter()
                .enumerate()
                .map(|(i, &(loss, val_loss))| EpochMetrics {
                    epoch: i + 1,
                    seconds: 1.0,
                    loss,
                    acc: 0.5,
                    val_loss,
                    val_acc: val_loss.map(|_| 0.5),
                    learning_rate: 1e-3,
                    images_per_second: 1.0,
                })
                .collect(),
            stopped: None,
        }
    }

    #[test]
    fn the_gap_is_the_largest_over_losses_and_val_losses() {
        let a = history(&[(1.5, Some(1.4)), (1.2, Some(1.1))]);
        let b = history(&[(1.5004, Some(1.4)), (1.2, Some(1.1025))]);
        let gap = largest_gap(&a, &b).unwrap();
        assert!((gap - 0.0025).abs() < 1e-9, "{gap}");
        assert_eq!(largest_gap(&a, &a), Some(0.0));
    }

    #[test]
    fn runs_of_other_epochs_have_no_gap() {
        let a = history(&[(1.5, None), (1.2, None)]);
        assert_eq!(largest_gap(&a, &history(&[(1.5, None)])), None);
        assert_eq!(
            largest_gap(&a, &history(&[(1.5, Some(1.0)), (1.2, None)])),
            None
        );
        assert_eq!(largest_gap(&history(&[]), &history(&[])), None);
    }
}
