#!/usr/bin/env bash
# An mpnet cluster on SGE (Grid Engine), found through a scheduler file on a shared file
# system: the seed's two qsub lines, plus a client.
#
#   bash examples/sge.sh [N_WORKERS]            # on a submit host
#
# 1. a scheduler job writes the scheduler file (address + token, mode 0600) once it listens;
# 2. an array job (-t 1-N) starts N workers, which wait for the file and join;
# 3. a Python client on this host connects through the same file and runs tasks;
# 4. qdel stops both jobs: the scheduler removes the file and the workers leave.
#
# Needs: mpnet installed where the jobs run (-V passes this shell's PATH on), and a
# directory every host sees at the same path ($HOME here). The parallel environment
# ("smp" below) and the resource names (h_rt, h_vmem) differ between sites. Ports to open
# between hosts: 8786 (scheduler) and the workers' random ports, or fix those with
# --worker-port 9000:9100.
set -euo pipefail

N_WORKERS=${1:-4}
SHARED=${MPNET_SHARED_DIR:-$HOME/.mpnet}
SCHEDULER_FILE=$SHARED/scheduler-$$.json
mkdir -p "$SHARED/logs"
rm -f "$SCHEDULER_FILE"   # a file left by an earlier run would be reported as stale

# The scheduler: the seed's `qsub -b y dask-scheduler --scheduler-file ...`.
# --idle-timeout ends it if the client never comes (or forgets to qdel).
scheduler_job=$(qsub -terse -V -cwd -j y -o "$SHARED/logs" -N mpnet-scheduler \
    -l h_rt=01:00:00 -b y \
    "$(command -v mpnet-scheduler)" --scheduler-file "$SCHEDULER_FILE" --idle-timeout 15m)

# The workers: the seed's `qsub -b y -t 1-100 dask-worker --scheduler-file ...`, as a
# script on stdin so that $NSLOTS and $SGE_TASK_ID are read where each task runs.
worker_job=$(qsub -terse -V -cwd -j y -o "$SHARED/logs" -N mpnet-worker \
    -t "1-$N_WORKERS" -pe smp 4 -l h_rt=01:00:00 <<EOF | cut -d. -f1
#!/bin/bash
exec mpnet-worker --scheduler-file "$SCHEDULER_FILE" --nthreads "\${NSLOTS:-1}" \\
    --name "sge-\$JOB_ID-\$SGE_TASK_ID" --death-timeout 15m
EOF
)

trap 'qdel "$scheduler_job" "$worker_job" >/dev/null 2>&1 || true' EXIT
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
