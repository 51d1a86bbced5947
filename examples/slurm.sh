#!/usr/bin/env bash
# An mpnet cluster on SLURM, found through a scheduler file on a shared file system.
#
#   bash examples/slurm.sh [N_WORKERS]          # on a login node
#
# 1. a scheduler job writes the scheduler file (address + token, mode 0600) once it listens;
# 2. an array job starts N workers, which wait for the file and join (they may start first);
# 3. a Python client on this node connects through the same file and runs tasks;
# 4. scancel stops both jobs: the scheduler removes the file and the workers leave.
#
# Needs: mpnet installed where the jobs run (the same Python environment everywhere), and
# a directory every node sees at the same path ($HOME here). Try it on one machine first
# with `python examples/scheduler_file.py`. Adapt the #resources to your site (partition,
# account, time). Ports to open between nodes: 8786 (scheduler) and the workers' random
# ports, or fix those with --worker-port 9000:9100.
set -euo pipefail

N_WORKERS=${1:-4}
SHARED=${MPNET_SHARED_DIR:-$HOME/.mpnet}
SCHEDULER_FILE=$SHARED/scheduler-$$.json
mkdir -p "$SHARED/logs"
rm -f "$SCHEDULER_FILE"   # a file left by an earlier run would be reported as stale

# The scheduler. --idle-timeout ends it if the client never comes (or forgets to scancel).
scheduler_job=$(sbatch --parsable --job-name=mpnet-scheduler --ntasks=1 --cpus-per-task=2 \
    --time=01:00:00 --output="$SHARED/logs/%x-%j.log" \
    --wrap="exec mpnet-scheduler --scheduler-file '$SCHEDULER_FILE' --idle-timeout 15m")

# The workers, one array element per node share. Each waits up to --death-timeout for the
# file, reads the address and token from it, and uses what SLURM gave it.
worker_job=$(sbatch --parsable --job-name=mpnet-worker --array="1-$N_WORKERS" --ntasks=1 \
    --cpus-per-task=4 --mem=8G --time=01:00:00 --output="$SHARED/logs/%x-%A_%a.log" \
    --wrap="exec mpnet-worker --scheduler-file '$SCHEDULER_FILE' \
            --nthreads \"\$SLURM_CPUS_PER_TASK\" --memory-limit \"\${SLURM_MEM_PER_NODE}MiB\" \
            --name \"slurm-\$SLURM_ARRAY_JOB_ID-\$SLURM_ARRAY_TASK_ID\" --death-timeout 15m")

trap 'scancel "$scheduler_job" "$worker_job" 2>/dev/null || true' EXIT
echo "scheduler job $scheduler_job, worker array job $worker_job; file $SCHEDULER_FILE"

# The client: anywhere the file is visible. It waits for the file (the jobs may queue),
# then for the workers, then computes.
python - "$SCHEDULER_FILE" "$N_WORKERS" <<'EOF'
import sys
import time

from mpnet import Client

scheduler_file, n_workers = sys.argv[1], int(sys.argv[2])
with Client(scheduler_file=scheduler_file, timeout=3600) as client:
    while len(client.scheduler_info()["workers"]) < n_workers:
        time.sleep(1)
    print(f"{n_workers} workers joined {client.scheduler_address}")
    futures = client.map(pow, range(1000), [2] * 1000)
    print("sum of squares of 0..999 =", client.submit(sum, futures).result())
EOF
