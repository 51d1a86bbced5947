"""Watch a cluster: run some work, kill a worker, and look at it the ways mpnet offers.

    python examples/monitoring.py                 # prints the status view and the links
    python examples/monitoring.py --linger 60     # ... then keeps the cluster up a minute:
                                                  # run `mpnet top ADDRESS` (token below)
    python examples/monitoring.py --svg top.svg   # also save the terminal view as SVG

See docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time

from rich.console import Console

import mpnet
from mpnet.diagnostics.status import render


def load_chunk(i):
    time.sleep(random.uniform(0.01, 0.05))
    return bytes(10_000 * (i % 5))


def parse(chunk):
    time.sleep(0.02)
    return len(chunk)


class Tally:
    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--linger", type=float, default=0, help="seconds to stay up after")
    parser.add_argument("--svg", default=None, help="save the terminal view here")
    args = parser.parse_args()
    with mpnet.LocalCluster(n_workers=3, threads_per_worker=1, memory_limit="1GiB") as cluster, \
            mpnet.Client(cluster) as client:
        print(cluster)
        print(f"dashboard: {cluster.dashboard_link}   (/metrics for Prometheus)")
        print(f"watch it:  MPNET_TOKEN={cluster.token} mpnet top {cluster.scheduler_address}")
        tally = client.actor(Tally, max_restarts=2)
        chunks = client.map(load_chunk, range(200))
        sizes = client.map(parse, chunks)
        mpnet.progress(sizes)
        for n in client.gather(sizes[:20]):
            tally.add(n).result()
        victim = next(iter(client.scheduler_info()["workers"].values()))
        os.kill(victim["pid"], signal.SIGKILL)          # the events show it and its restart
        more = client.map(parse, chunks, key=[f"parse-again-{i}" for i in range(200)])
        deadline = time.monotonic() + 10
        while len(client.scheduler_info()["workers"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(30):
            tally.add(1).result()
        time.sleep(1.2)                                   # mid-run: rates and bars move
        console = Console(record=bool(args.svg), width=150 if args.svg else None)
        console.print(render(client.get_status(history=True), console.width))
        if args.svg:
            console.save_svg(args.svg, title="mpnet top")
        client.gather(more)
        if args.linger:
            print(f"staying up for {args.linger:.0f} s; Ctrl-C to stop")
            try:
                time.sleep(args.linger)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
