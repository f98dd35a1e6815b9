#!/usr/bin/env bash
# `cargo xtask slurm-up`: a one-node Slurm on this machine (Debian's slurm-wlm 22.05 and
# munge), to try `simplecnn sweep --submit` and for CI's Slurm test. As root only; it
# installs the packages, writes /etc/slurm/slurm.conf only when there is none (a machine that
# has a Slurm keeps its own), and starts munged, slurmctld and slurmd where they are not
# running. Processes are tracked by process group (no cgroups needed, so it works in
# containers). Stop it with: pkill slurmd; pkill slurmctld; pkill munged
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root (it installs packages and starts system daemons)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  echo "slurm-up: installing slurmctld, slurmd, slurm-client and munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

conf=/etc/slurm/slurm.conf
if [ ! -f "$conf" ]; then
  host=$(hostname -s)
  mkdir -p /etc/slurm
  cat > "$conf" <<CONF
# Written by simplecnn's \`cargo xtask slurm-up\`: one node, this machine.
ClusterName=simplecnn
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge

if ! pgrep -x munged >/dev/null; then
  [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key -f >/dev/null
  runuser -u munge -- /usr/sbin/munged
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
  if sinfo --noheader --format=%T 2>/dev/null | grep -q idle; then
    echo "slurm-up: Slurm is up: $(sinfo --noheader --format='%P %D node(s) %T' | head -1)"
    exit 0
  fi
  sleep 1
done
echo "slurm-up: no idle node after 60 s; see /var/log/slurm/" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
