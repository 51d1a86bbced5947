"""A whole cluster inside one MPI job: run it with

    mpirun -np 4 python examples/mpi_batch.py                  # any network
    mpirun -np 4 python examples/mpi_batch.py --interface ib0  # InfiniBand

Rank 0 becomes the scheduler, ranks 2 and up the workers; only rank 1 goes past
``initialize()`` and runs the rest of this script as the client. When the script ends
(here, or by an exception, or by sys.exit), every rank exits with its exit code.
Needs ``pip install 'mpnet[mpi]'`` and at least 3 ranks. See docs/mpi.md.
"""

import argparse

from mpnet import Client
from mpnet.mpi import initialize

parser = argparse.ArgumentParser()
parser.add_argument("--interface", default=None, help="network interface, e.g. ib0")
args = parser.parse_args()

cluster = initialize(interface=args.interface)


def square(x: int) -> int:
    return x * x


with Client(cluster) as client:
    print(f"{len(cluster.worker_names)} worker ranks: {', '.join(cluster.worker_names)}")
    futures = client.map(square, range(10_000))
    total = client.submit(sum, futures).result()
    print(f"sum of squares below 10000: {total}")
