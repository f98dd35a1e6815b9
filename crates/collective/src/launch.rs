//! Who started this process, as far as the launcher's environment tells: alone, or one of
//! several processes of an MPI job (Open MPI's or MPICH's `mpirun`, Slurm's `srun`). What a
//! program reads before choosing its [`crate::Collective`].

/// The variables MPI launchers set in every process they start, with the number of
/// processes: Open MPI's `mpirun` and MPICH's (Hydra), Slurm's `srun --mpi=pmi2`.
const SIZE_VARIABLES: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
/// What a PMIx server (Slurm's `srun --mpi=pmix`) sets: a rank, but no number of
/// processes: MPI asks the server.
const PMIX_VARIABLE: &str = "PMIX_RANK";

/// How this process was started.
#[derive(Debug, PartialEq)]
pub enum Launch {
    Alone,
    /// An MPI launcher that announced the number of processes.
    Mpi(usize),
    /// A PMIx launcher: MPI will know the number.
    Pmix,
    /// `srun` started this many tasks with no MPI plugin: each would run on its own.
    SrunWithoutMpi(usize),
}

impl Launch {
    /// From this process' environment.
    pub fn from_env() -> Launch {
        Launch::from_variables(|v| std::env::var(v).ok())
    }

    /// From the variables `var` gives.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Launch {
        let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(n) = SIZE_VARIABLES.iter().find_map(|v| number(v)) {
            return Launch::Mpi(n);
        }
        if var(PMIX_VARIABLE).is_some() {
            return Launch::Pmix;
        }
        match number("SLURM_STEP_NUM_TASKS") {
            Some(n) if n > 1 => Launch::SrunWithoutMpi(n),
            _ => Launch::Alone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchers_are_told_apart_by_their_variables() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        let launch = |pairs: &[(&str, &str)]| Launch::from_variables(env(pairs));
        assert_eq!(launch(&[]), Launch::Alone);
        assert_eq!(launch(&[("OMPI_COMM_WORLD_SIZE", "3")]), Launch::Mpi(3));
        // srun --mpi=pmi2
        let pmi2 = [
            ("PMI_SIZE", "2"),
            ("PMI_RANK", "1"),
            ("SLURM_STEP_NUM_TASKS", "2"),
        ];
        assert_eq!(launch(&pmi2), Launch::Mpi(2));
        // srun --mpi=pmix sets a rank and a namespace, not a size.
        let pmix = [("PMIX_RANK", "0"), ("SLURM_STEP_NUM_TASKS", "2")];
        assert_eq!(launch(&pmix), Launch::Pmix);
        // srun with no MPI plugin; one task, or a batch script (no step), is alone.
        let bare = [("SLURM_STEP_NUM_TASKS", "2"), ("SLURM_NTASKS", "2")];
        assert_eq!(launch(&bare), Launch::SrunWithoutMpi(2));
        assert_eq!(launch(&[("SLURM_STEP_NUM_TASKS", "1")]), Launch::Alone);
        assert_eq!(launch(&[("SLURM_NTASKS", "4")]), Launch::Alone);
    }
}
