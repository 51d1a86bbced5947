"""Large data: how fast mpnet moves 100 MB, against a plain socket doing the same.

Run it from anywhere (it benchmarks the mpnet of this checkout)::

    python benchmarks/bench_data.py              # 100 MB, median of 5 transfers each
    python benchmarks/bench_data.py --quick      # 100 MB, median of 2
    python benchmarks/bench_data.py --mb 20 --runs 3 --json out.json

Numbers, each in MB/s (10**6 bytes per second, median of ``--runs`` transfers):

* socket    -- the floor: one process sends the bytes over loopback TCP with ``sendall``
  and another ``recv_into``s a buffer it allocated beforehand. Timed on the receiver
  from its "go" to the last byte; measured before and after the mpnet figures, the
  better median kept.
* w2w bytes / w2w ndarray -- worker to worker: a value made on worker A (pinned with
  ``workers=``), then a task pinned to worker B that takes it as its argument and returns
  its length. Timed from that task's submit to its result: the fetch, the unpickle on B
  and one task round trip (~0.3 ms).
* put ndarray -- client to worker: ``scatter`` of the array to one worker (timed to the
  acknowledgement), and ``submit(nbytes, array)`` (timed to the result).

Each mpnet figure is measured twice: with shared memory between workers of one host off
(``shm_enabled=False``: the TCP path) and on (the default). Client-to-worker transfers
always go over TCP (the client is not a worker). Targets (issue 14): TCP at least 70% of
the socket; shared memory worker to worker at least 3x the TCP figure. They are printed
as PASS/MISS, never asserted.
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

def _socket_sender(port: int, nbytes: int, runs: int) -> None:
    data = bytearray(os.urandom(1 << 20)) * (nbytes >> 20) + bytearray(nbytes % (1 << 20))
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(runs):
            if s.recv(1) != b"g":
                return
            s.sendall(data)


def socket_floor(nbytes: int, runs: int) -> list[float]:
    """MB/s of ``runs`` transfers of ``nbytes`` over loopback between two processes."""
    ctx = multiprocessing.get_context("spawn")
    with socket.create_server(("127.0.0.1", 0)) as server:
        child = ctx.Process(target=_socket_sender, args=(server.getsockname()[1], nbytes, runs))
        child.start()
        conn, _ = server.accept()
        buf = bytearray(nbytes)
        view = memoryview(buf)
        rates = []
        with conn:
            for _ in range(runs):
                got = 0
                t0 = time.perf_counter()
                conn.sendall(b"g")
                while got < nbytes:
                    n = conn.recv_into(view[got:])
                    if not n:
                        raise RuntimeError("the sender went away")
                    got += n
                rates.append(nbytes / (time.perf_counter() - t0) / 1e6)
        child.join(10)
    return rates


# --- mpnet ---------------------------------------------------------------------------

def make_bytes(n: int) -> bytes:
    return os.urandom(1 << 20) * (n >> 20) + bytes(n % (1 << 20))


def make_array(n: int):
    import numpy as np
    return np.frombuffer(make_bytes(n), dtype=np.uint8).copy()


def size_of(x) -> int:
    return x.nbytes if hasattr(x, "nbytes") else len(x)


def _timed(fn, runs: int, nbytes: int) -> list[float]:
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        rates.append(nbytes / (time.perf_counter() - t0) / 1e6)
    return rates


def mpnet_rates(nbytes: int, runs: int, shm: bool) -> dict[str, list[float]]:
    from mpnet import Client, LocalCluster
    out: dict[str, list[float]] = {}
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
            out[f"w2w {name}"] = [nbytes / w2w() / 1e6 for _ in range(runs)]
        if not shm:          # the client is no worker: always TCP
            out.update(client_rates(client, nbytes, runs, a, "client"))
            out.update(remote_client_rates(cluster, nbytes, runs, a))
    return out


def client_rates(client, nbytes: int, runs: int, worker: str, who: str) -> dict:
    """Client to worker (scatter, and submit with the value as argument) and worker to
    client (a task's result fetched by ``result()``), for ``client``."""
    out: dict[str, list[float]] = {}
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
        out[f"scatter {name} ({who})"] = _timed(scatter, runs, nbytes)
        out[f"submit {name} ({who})"] = _timed(submit, runs, nbytes)
        out[f"fetch {name} ({who})"] = [nbytes / fetch() / 1e6 for _ in range(runs)]
    return out


def _remote_client(address: str, token: str, nbytes: int, runs: int, worker: str,
                   conn) -> None:
    from mpnet import Client
    with Client(address, token=token) as client:
        conn.send(client_rates(client, nbytes, runs, worker, "other process"))


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

    results: dict[str, float] = {}
    floors = [statistics.median(socket_floor(nbytes, runs))]
    for shm in {"tcp": (False,), "shm": (True,)}.get(args.only, (False, True)):
        for name, rates in mpnet_rates(nbytes, runs, shm).items():
            results[f"{name} ({'shm' if shm else 'tcp'})"] = statistics.median(rates)
    # The socket again at the end, and the better of the two: on a shared machine one
    # slow spell must not make the floor (and every ratio against it) look easy.
    floors.append(statistics.median(socket_floor(nbytes, runs)))
    results = {"socket": max(floors), **results}

    floor = results["socket"]
    print(f"\n{args.mb} MB per transfer, median of {runs}; MB/s and ratio to the socket\n")
    print(f"{'':36}{'MB/s':>10}{'x socket':>10}  target")
    print(f"{'socket (floor)':36}{floor:10.0f}{1:10.2f}")
    for name, rate in results.items():
        if name == "socket":
            continue
        ratio = rate / floor
        if name.endswith("(tcp)") or not name.startswith("w2w") or args.only:
            verdict = f"tcp >= {TCP_TARGET:.0%}: {'PASS' if ratio >= TCP_TARGET else 'MISS'}"
        else:
            tcp = results[name.replace("(shm)", "(tcp)")]
            verdict = (f"shm >= {SHM_TARGET:.0f}x tcp: {rate / tcp:.1f}x "
                       f"{'PASS' if rate >= SHM_TARGET * tcp else 'MISS'}")
        print(f"{name:36}{rate:10.0f}{ratio:10.2f}  {verdict}")
    if numpy is None:
        print("\nnumpy is not installed: the ndarray rows are skipped")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mb": args.mb, "runs": runs, "mb_per_s": results}, f, indent=2)


if __name__ == "__main__":
    main()
