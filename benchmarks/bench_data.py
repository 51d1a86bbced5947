"""Large data: how fast mpnet moves 100 MB, against a plain socket doing the same.

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_data.py              # 100 MB, median of 5 transfers each
    python benchmarks/bench_data.py --quick      # 100 MB, median of 2
    python benchmarks/bench_data.py --mb 20 --runs 3 --json out.json

Numbers, each in MB/s (10**6 bytes per second, median of ``--runs`` transfers):

* socket    -- the floor: one process sends the bytes over loopback TCP with ``sendall``
  and another ``recv_into``s a buffer it allocated beforehand. Timed on the receiver
  from its "go" to the last byte. One socket transfer runs just before each mpnet
  transfer, and each row's ratio is the median of those pairs' ratios: on a shared
  machine, load that comes and goes hits both sides of a pair alike.
* w2w bytes / w2w ndarray -- worker to worker: a value made on worker A (pinned with
  ``workers=``), then a task pinned to worker B that takes it as its argument and returns
  its length. Timed from that task's submit to its result: the fetch, the unpickle on B
  and one task round trip (~0.3 ms).
* scatter / submit -- client to worker, ``bytes`` and ndarray: ``scatter`` of the value
  to one worker (timed to its return: the worker holds it and the scheduler knows), and
  ``submit(size_of, value)`` (timed to the result: the put, one task round trip).
* fetch -- worker to client: a value made by a task on the worker, then ``result()``
  (timed from that call to the value in hand).

The client rows run twice: for ``Client(cluster)`` (the client shares the cluster's
process and talks to its scheduler without a socket) and for a client in another
process (``Client("tcp://...")``). Large values go between client and worker directly,
one TCP hop (docs/data.md, "Direct put").

Worker-to-worker figures are measured twice: with shared memory between workers of one
host off (``shm_enabled=False``: the TCP path) and on (the default). Client-to-worker
transfers always go over TCP (the client is not a worker). Targets (issue 14): TCP at
least 70% of the socket; shared memory worker to worker at least 3x the TCP figure.
Each row says PASS or MISS; nothing is asserted. The machine this runs on may be shared:
run it twice and compare before reading much into one row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # benchmark this checkout, installed or not (children: PYTHONPATH)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

try:
    import numpy
except ImportError:        # ndarray rows say "skipped"
    numpy = None

TCP_TARGET = 0.70
SHM_TARGET = 3.0


# --- the floor: a plain socket between two processes ----------------------------------

def _socket_sender(port: int, nbytes: int) -> None:
    data = bytearray(os.urandom(1 << 20)) * (nbytes >> 20) + bytearray(nbytes % (1 << 20))
    with socket.create_connection(("127.0.0.1", port)) as s:
        while s.recv(1) == b"g":
            s.sendall(data)


class Floor:
    """A plain socket moving ``nbytes`` from a child process to this one, on demand:
    ``once()`` is the MB/s of one transfer. Each mpnet transfer is paired with one of
    these taken just before it, so that both see the same load on a shared machine."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self._server = socket.create_server(("127.0.0.1", 0))
        self._child = multiprocessing.get_context("spawn").Process(
            target=_socket_sender, args=(self._server.getsockname()[1], nbytes))
        self._child.start()
        self._conn, _ = self._server.accept()
        self._view = memoryview(bytearray(nbytes))    # warm: no page faults (see README)

    def once(self) -> float:
        got = 0
        t0 = time.perf_counter()
        self._conn.sendall(b"g")
        while got < self.nbytes:
            n = self._conn.recv_into(self._view[got:])
            if not n:
                raise RuntimeError("the sender went away")
            got += n
        return self.nbytes / (time.perf_counter() - t0) / 1e6

    def close(self) -> None:
        self._conn.sendall(b"q")
        self._conn.close()
        self._server.close()
        self._child.join(10)


def paired(fn, runs: int, floor: Floor) -> list[tuple[float, float]]:
    """``runs`` pairs (socket MB/s, mpnet MB/s): the socket, then ``fn()`` (which
    returns the seconds its transfer took)."""
    out = []
    for _ in range(runs):
        sock = floor.once()
        out.append((sock, floor.nbytes / fn() / 1e6))
    return out


# --- mpnet ---------------------------------------------------------------------------

def make_bytes(n: int) -> bytes:
    return os.urandom(1 << 20) * (n >> 20) + bytes(n % (1 << 20))


def make_array(n: int):
    import numpy as np
    return np.frombuffer(make_bytes(n), dtype=np.uint8).copy()


def size_of(x) -> int:
    return x.nbytes if hasattr(x, "nbytes") else len(x)


def _seconds(fn):
    def timed():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return timed


def mpnet_rates(nbytes: int, runs: int, shm: bool, floor: Floor) -> dict[str, list]:
    from mpnet import Client, LocalCluster
    out: dict[str, list] = {}
    options = {} if shm is None else {"shm_enabled": shm}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      **options) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])[:2]
        makers = [("bytes", make_bytes)] + ([("ndarray", make_array)] if numpy else [])
        for name, maker in makers:
            def w2w():
                # a fresh value each run: B must not hold it already
                src = client.submit(maker, nbytes, workers=[a], pure=False)
                client.wait([src])
                t0 = time.perf_counter()
                n = client.submit(size_of, src, workers=[b], pure=False).result()
                dt = time.perf_counter() - t0
                assert n == nbytes, n
                src.release()
                return dt
            out[f"w2w {name}"] = paired(w2w, runs, floor)
        if not shm:          # the client is no worker: always TCP
            out.update(client_rates(client, nbytes, runs, a, "Client(cluster)", floor))
            out.update(remote_client_rates(cluster, nbytes, runs, a))
    return out


def client_rates(client, nbytes: int, runs: int, worker: str, who: str,
                 floor: Floor) -> dict:
    """Client to worker (scatter, and submit with the value as argument) and worker to
    client (a task's result fetched by ``result()``), for ``client``."""
    out: dict[str, list] = {}
    values = [("bytes", make_bytes(nbytes))] + \
        ([("ndarray", make_array(nbytes))] if numpy else [])
    for name, value in values:
        def scatter():
            fut = client.scatter(value, workers=[worker])
            fut.release()

        def submit():
            assert client.submit(size_of, value, workers=[worker], pure=False).result() \
                == nbytes

        def fetch():
            # made on the worker first: timed from result() to the value in hand
            src = client.submit(make_array if name == "ndarray" else make_bytes, nbytes,
                                workers=[worker], pure=False)
            client.wait([src])
            t0 = time.perf_counter()
            got = src.result()
            dt = time.perf_counter() - t0
            assert size_of(got) == nbytes
            src.release()
            return dt
        out[f"scatter {name}, {who}"] = paired(_seconds(scatter), runs, floor)
        out[f"submit {name}, {who}"] = paired(_seconds(submit), runs, floor)
        out[f"fetch {name}, {who}"] = paired(fetch, runs, floor)
    return out


def _remote_client(address: str, token: str, nbytes: int, runs: int, worker: str,
                   conn) -> None:
    from mpnet import Client
    floor = Floor(nbytes)          # its own socket, paired with this process's transfers
    try:
        with Client(address, token=token) as client:
            conn.send(client_rates(client, nbytes, runs, worker, "other process", floor))
    finally:
        floor.close()


def remote_client_rates(cluster, nbytes: int, runs: int, worker: str) -> dict:
    """``client_rates`` from a client in another process (``Client("tcp://...")``)."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_remote_client, args=(cluster.scheduler_address,
                                                     cluster.token, nbytes, runs, worker,
                                                     there))
    child.start()
    try:
        return here.recv()
    finally:
        child.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 transfers each")
    parser.add_argument("--runs", type=int, default=None, help="transfers per figure")
    parser.add_argument("--mb", type=int, default=100, help="MB per transfer")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", choices=["tcp", "shm"], help="mpnet with shared memory "
                        "off (tcp) or on (shm) only, e.g. under a profiler")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    nbytes = args.mb * 10**6

    floor = Floor(nbytes)
    pairs: dict[str, list] = {}
    try:
        for shm in {"tcp": (False,), "shm": (True,)}.get(args.only, (False, True)):
            for name, got in mpnet_rates(nbytes, runs, shm, floor).items():
                if name.startswith("w2w"):
                    name = f"{name} ({'shm' if shm else 'tcp'})"
                pairs[name] = got
    finally:
        floor.close()
    # Per row: medians of the mpnet and of the paired socket transfers, and the median
    # of the per-pair ratios (each pair saw the same load).
    rows = {name: {"mb_per_s": statistics.median(r for _, r in got),
                   "socket_mb_per_s": statistics.median(s for s, _ in got),
                   "ratio": statistics.median(r / s for s, r in got)}
            for name, got in pairs.items()}
    everything = [s for got in pairs.values() for s, _ in got]
    print(f"\n{args.mb} MB per transfer, median of {runs}, each paired with a socket "
          "transfer just before it\n")
    print(f"{'':36}{'MB/s':>8}{'socket':>8}{'x socket':>10}  target")
    print(f"{'socket (floor), all pairs':36}{statistics.median(everything):8.0f}")
    for name, row in rows.items():
        rate, ratio = row["mb_per_s"], row["ratio"]
        if not name.endswith("(shm)") or args.only:
            verdict = f"tcp >= {TCP_TARGET:.0%}: {'PASS' if ratio >= TCP_TARGET else 'MISS'}"
        else:
            tcp = rows[name.replace("(shm)", "(tcp)")]["mb_per_s"]
            verdict = (f"shm >= {SHM_TARGET:.0f}x tcp: {rate / tcp:.1f}x "
                       f"{'PASS' if rate >= SHM_TARGET * tcp else 'MISS'}")
        print(f"{name:36}{rate:8.0f}{row['socket_mb_per_s']:8.0f}{ratio:10.2f}  {verdict}")
    if numpy is None:
        print("\nnumpy is not installed: the ndarray rows are skipped")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mb": args.mb, "runs": runs, "rows": rows, "pairs": pairs}, f,
                      indent=2)


if __name__ == "__main__":
    main()
