//! `sweep FILE --submit`: a sweep as a Slurm job array. Array task I runs
//! `simplecnn sweep FILE --index I` in the folder the sweep was submitted from (runs that
//! finished already are skipped, unfinished ones resumed: resubmitting a sweep finishes it), at
//! most `--jobs` at a time; a second job, started when the array has ended however it ended
//! (`afterany`), writes the summary.
//!
//! Paths in the script are absolute (the program, the sweep file, its folders), so the nodes
//! need the same file system (as every Slurm cluster's home and project folders are).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sweep::{SweepArgs, SweepPlan};

/// Writes `<sweep folder>/sweep.sbatch` and `summary.sbatch`, and submits both unless
/// `--no-submit`.
pub fn submit(plan: &SweepPlan, args: &SweepArgs) -> Result<()> {
    for option in &args.sbatch {
        if option.contains(['\n', '\r']) || !option.starts_with('-') {
            bail!("--sbatch {option:?}: one sbatch option, as `--time=02:00:00`");
        }
    }
    let logs = plan.folder.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let logs = absolute(&logs)?;
    let folder = absolute(&plan.folder)?;
    let here = std::env::current_dir().context("cannot read the current folder")?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let file = absolute(&args.file)?;
    for path in [&logs, &here] {
        // `#SBATCH` lines are split at white space by sbatch, not read by a shell.
        if path.display().to_string().contains(char::is_whitespace) {
            bail!(
                "{}: a folder with white space in its path cannot go in an #SBATCH line; \
                 submit from, and write to, folders without",
                path.display()
            );
        }
    }
    let mut command = vec![
        quote(&exe.display().to_string()),
        "sweep".into(),
        quote(&file.display().to_string()),
    ];
    command.extend(plan.arguments().iter().map(|a| quote(a)));

    let runs = plan.sweep.len();
    let last = runs - 1;
    let limit = args.jobs.map(|k| format!("%{k}")).unwrap_or_default();
    let array = header(
        &plan.sweep.name,
        &[
            format!("--array=0-{last}{limit}"),
            format!("--output={}/slurm-%A_%a.out", logs.display()),
            format!("--chdir={}", here.display()),
        ],
        &args.sbatch,
    ) + &format!(
        "# Run I of the sweep is array task I (`simplecnn sweep FILE --list` names them).\n\
         exec {} --index=\"$SLURM_ARRAY_TASK_ID\"\n",
        command.join(" ")
    );
    let summary = header(
        &format!("{}-summary", plan.sweep.name),
        &[
            format!("--output={}/slurm-%j-summary.out", logs.display()),
            format!("--chdir={}", here.display()),
            "--ntasks=1".into(),
        ],
        &args.sbatch,
    ) + &format!("exec {} --summary\n", command.join(" "));
    let array_script = folder.join("sweep.sbatch");
    let summary_script = folder.join("summary.sbatch");
    for (path, text) in [(&array_script, &array), (&summary_script, &summary)] {
        crate::files::write_contents(path, text)?;
    }
    println!(
        "wrote {} ({} array tasks) and {}",
        array_script.display(),
        runs,
        summary_script.display()
    );
    if args.no_submit {
        println!("submit with: sbatch {}", array_script.display());
        return Ok(());
    }
    let job = sbatch(&[&array_script.display().to_string()])?;
    let summary_job = sbatch(&[
        &format!("--dependency=afterany:{job}"),
        &summary_script.display().to_string(),
    ])?;
    println!(
        "submitted job array {job} (runs 0-{last}) and job {summary_job} for the summary \
         ({}/summary.md when the array has ended); see them with `squeue -j {job},{summary_job}`",
        folder.display()
    );
    Ok(())
}

/// `#!/bin/bash` and the `#SBATCH` lines: the job's name, `options`, then the user's.
fn header(name: &str, options: &[String], extra: &[String]) -> String {
    let mut text = format!(
        "#!/bin/bash\n# Written by `simplecnn sweep --submit`.\n#SBATCH --job-name={name}\n"
    );
    for option in options.iter().chain(extra) {
        text += &format!("#SBATCH {option}\n");
    }
    text + "set -euo pipefail\n"
}

/// Runs `sbatch --parsable ARGS`; the job id it prints.
fn sbatch(args: &[&str]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .context(
            "cannot run sbatch: is Slurm installed here? (--no-submit writes the script only)",
        )?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed {text:?}, not a job id");
    }
    Ok(id)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// `s` as one word for bash: single-quoted, its own single quotes closed and escaped.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_survive_the_shell() {
        let word = "it's a \"test\" $HOME `x`";
        let out = Command::new("bash")
            .args(["-c", &format!("printf %s {}", quote(word))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), word);
    }
}
