"""The shared-file-system flow of examples/slurm.sh and examples/sge.sh, on one machine.

    python examples/scheduler_file.py [N_WORKER_COMMANDS]

What the job scheduler would do on a cluster, done here with subprocesses:

    mpnet-scheduler --scheduler-file F            (the scheduler job)
    mpnet-worker --scheduler-file F  × N          (the array job, started at the same time:
                                                   each waits for F to appear)
    Client(scheduler_file=F)                      (your script, anywhere F is visible)

The scheduler writes F (mode 0600: it holds the token) once it listens; workers and the
client read the address and the token from it. SIGTERM to the scheduler removes F and
tells the workers to leave; they exit by themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpnet import Client

MPNET = [sys.executable, "-m", "mpnet.cli.main"]   # the `mpnet` console script, from here


def main(n_workers: int = 2) -> None:
    with tempfile.TemporaryDirectory(prefix="mpnet-example-") as tmp:
        scheduler_file = Path(tmp) / "scheduler.json"
        # A token file of its own, so the example leaves ~/.config/mpnet alone; workers
        # and the client never see this file: the token travels in the scheduler file.
        token_file = Path(tmp) / "token"
        scheduler = subprocess.Popen([*MPNET, "scheduler", "--host", "127.0.0.1",
                                      "--port", "0", "--scheduler-file", str(scheduler_file),
                                      "--token-file", str(token_file)])
        workers = [subprocess.Popen([*MPNET, "worker", "--scheduler-file", str(scheduler_file),
                                     "--nthreads", "1", "--name", f"job-{i}"])
                   for i in range(n_workers)]
        try:
            run_client(scheduler_file, n_workers)
        finally:
            scheduler.send_signal(signal.SIGTERM)   # what scancel / qdel send
            scheduler.wait(30)
            for w in workers:
                w.wait(30)
            print(f"scheduler exited with {scheduler.returncode}, workers with "
                  f"{[w.returncode for w in workers]}; scheduler file removed: "
                  f"{not scheduler_file.exists()}")


def run_client(scheduler_file: Path, n_workers: int) -> None:
    # timeout: how long to wait for the file to appear, as a job may start late
    with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) < n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n_workers} workers did not join within 60 s")
            time.sleep(0.1)
        print(f"{n_workers} workers joined the scheduler at {client.scheduler_address}")
        total = client.submit(sum, client.map(pow, range(100), [2] * 100)).result()
        print("sum of squares of 0..99 =", total)
        print("worker pids:", sorted(client.run(os.getpid).values()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
