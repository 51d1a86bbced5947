"""Test hosts: network namespaces on this machine, each with its own OpenSSH server.

::

    driver (this process, root namespace)        namespace mpnet-t<pid>-1   ...-2   ...-N
      bridge mpbr<pid>  10.250.0.254/24  ◄─veth─► eth0 10.250.0.1/24  10.250.0.2 ... 10.250.0.N
                                                  sshd -D -f <tmp>/hostN/sshd_config (port 22)

What a test gets (``hosts`` fixture, session scoped, from tests/conftest.py)::

    hosts.addresses        ["10.250.0.1", ...]   one per host, reachable from the driver
    hosts.driver_address   "10.250.0.254"        the driver's own address on the bridge
    hosts.key_path         Path of the generated user key (ed25519, no passphrase)
    hosts.known_hosts      Path of a known_hosts file that lists every host's key
    hosts.home             a temporary HOME with .ssh/{id_ed25519,known_hosts,config}
    hosts.env              os.environ with HOME=hosts.home (for subprocesses)
    hosts.python           the Python the hosts run (this interpreter: the file system is
                           shared, so a namespace runs this checkout's .venv python)
    hosts.user             the user the servers accept (the one running the tests)
    hosts.run(i, cmd)      subprocess.run of ``cmd`` inside host i (0-based), text output
    hosts.pids(i)          pids of every process inside host i, sshd excluded
    hosts.mpnet_pids(i)    those running mpnet (its commands, and spawned worker processes)
    hosts.link_down(i) / hosts.link_up(i)   cut and restore host i's network

Only root can make namespaces: elsewhere :func:`unavailable` gives the reason and the
fixture skips. Names carry the pid, so two runs on one machine never collide; the subnet is
10.250.0.0/24 unless another live run holds it, in which case the next free 10.250.K.0/24.
Nothing of the machine's own ssh set-up is read or changed: every file sshd and the client
use lives in a temporary folder (the one exception: ``/run/sshd``, the empty directory
OpenSSH's privilege separation needs, is created if missing, as the package's boot script
would). :meth:`TestHosts.down` kills every process in the namespaces and removes them, the
veths and the bridge; :func:`remove_stale` removes what a killed run left behind
(namespaces, bridge, temporary folder), and runs at every :meth:`TestHosts.up`.
``python scripts/testhosts.py up 3`` makes the same hosts by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["TestHosts", "unavailable", "remove_stale", "SSHD"]

SSHD = "/usr/sbin/sshd"
_PREFIX = "mpnet-t"          # namespaces: mpnet-t<pid>-<i>
_LOCK = os.path.join(tempfile.gettempdir(), "mpnet-testhosts.lock")   # one per machine


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing: apt-get install openssh-server"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing: apt-get install openssh-client"
    probe = f"{_PREFIX}probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    try:                        # veths and a bridge, inside the probe so nothing shows
        for what, args in (("a veth pair", ("veth", "peer", "name", "p1")),
                           ("a bridge", ("bridge",))):
            made = _ip("-n", probe, "link", "add", f"p{len(args)}x", "type", *args,
                       check=False)
            if made.returncode != 0:
                return f"cannot make {what}: {made.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove the namespaces and bridges of test runs whose process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"({re.escape(_PREFIX)}(\d+)-\d+)\b", line)
        if m and not _alive(int(m.group(2))):
            _kill_namespace(m.group(1))
            _ip("netns", "del", m.group(1), check=False)
            removed.append(m.group(1))
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(r"\d+: (mpbr(\d+))[:@]", line)
        if m and not _alive(int(m.group(2))):
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    for folder in Path(tempfile.gettempdir()).glob("mpnet-testhosts-*-*"):
        m = re.fullmatch(r"mpnet-testhosts-(\d+)-.*", folder.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _kill_namespace(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _free_subnet() -> ipaddress.IPv4Network:
    """10.250.0.0/24, or the next 10.250.K.0/24 no interface of this machine is on."""
    used = set()
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
        if m:
            used.add(ipaddress.IPv4Address(m.group(1)))
    for k in range(256):
        net = ipaddress.IPv4Network(f"10.250.{k}.0/24")
        if not any(a in net for a in used):
            return net
    raise RuntimeError("every 10.250.K.0/24 subnet is in use")


_SSHD_CONFIG = """\
# written by tests/hosts.py: nothing here comes from /etc/ssh
Port 22
ListenAddress {address}
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
# bash skips ~/.bashrc when SHLVL says it is not a top-level shell. The hosts share this
# machine's home directory, whose rc files (pyenv's rehash takes a global lock) would
# serialise every session's start and, killed halfway, block later ones; separate
# machines would each have their own.
SetEnv SHLVL=1
"""


class TestHosts:
    """``n`` namespace hosts with sshd; :meth:`up` makes them, :meth:`down` removes all."""

    __test__ = False     # not a pytest test class

    def __init__(self, n: int = 3):
        self.n = n
        self.tag = str(os.getpid())
        self.namespaces = [f"{_PREFIX}{self.tag}-{i + 1}" for i in range(n)]
        self.bridge = f"mpbr{self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mpnet-testhosts-{self.tag}-"))
        self.home = self.tmp / "home"
        self.key_path = self.home / ".ssh" / "id_ed25519"
        self.known_hosts = self.home / ".ssh" / "known_hosts"
        self.python = sys.executable
        import pwd
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.addresses: list[str] = []
        self.driver_address = ""
        self._sshd: list[subprocess.Popen] = []
        self._up = False

    # --- set-up ---------------------------------------------------------------------

    def up(self, timeout: float = 20.0) -> "TestHosts":
        """Make the namespaces, the bridge and the servers; returns once sshd answers."""
        atexit.register(self.down)
        try:
            with open(_LOCK, "w") as lock:      # two runs must not pick the same subnet
                fcntl.flock(lock, fcntl.LOCK_EX)
                remove_stale()
                net = _free_subnet()
                hosts = list(net.hosts())
                self.addresses = [str(hosts[i]) for i in range(self.n)]
                self.driver_address = str(hosts[-1])     # .254
                self._up = True
                self._make_network(net.prefixlen)
            self._make_keys()
            for i in range(self.n):
                self._start_sshd(i)
            self._wait_sshd(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _make_network(self, prefix: int) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.driver_address}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            outside, inside = f"mpv{self.tag}x{i + 1}", f"mpv{self.tag}y{i + 1}"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("link", "set", inside, "netns", ns)
            _ip("-n", ns, "link", "set", inside, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/{prefix}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _make_keys(self) -> None:
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mpnet-test",
                        "-f", str(self.key_path)], check=True)
        (self.tmp / "authorized_keys").write_text(self.key_path.with_suffix(".pub").read_text())
        lines = []
        for i in range(self.n):
            d = self.tmp / f"host{i + 1}"
            d.mkdir()
            key = d / "ssh_host_ed25519_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "",
                            "-f", str(key)], check=True)
            kind, blob = key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{self.addresses[i]} {kind} {blob}\n")
            (d / "sshd_config").write_text(_SSHD_CONFIG.format(
                address=self.addresses[i], dir=d, authorized=self.tmp / "authorized_keys"))
        self.known_hosts.write_text("".join(lines))
        self.known_hosts.chmod(0o600)
        (ssh_dir / "config").write_text("")         # an empty config: nothing of ~/.ssh

    def _start_sshd(self, i: int) -> None:
        # OpenSSH's privilege separation needs this empty directory; the package's boot
        # script makes it, which a container never runs.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        d = self.tmp / f"host{i + 1}"
        log = open(d / "sshd.log", "w")
        with log:
            self._sshd.append(subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[i], SSHD, "-D", "-e",
                 "-f", str(d / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

    def _wait_sshd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i, address in enumerate(self.addresses):
            while True:
                if self._sshd[i].poll() is not None:
                    raise RuntimeError(f"sshd of test host {address} exited: "
                                       f"{self.sshd_log(i).strip()}")
                try:
                    with socket.create_connection((address, 22), timeout=1) as s:
                        if s.recv(4).startswith(b"SSH-"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd of test host {address} does not answer")
                time.sleep(0.05)

    # --- what tests use -------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home)}

    def sshd_log(self, i: int) -> str:
        return (self.tmp / f"host{i + 1}" / "sshd.log").read_text()

    def run(self, i: int, cmd: list[str] | str, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a list, or a shell line) inside host ``i``; output as text."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.namespaces[i], *argv], **kwargs)

    def pids(self, i: int) -> list[int]:
        """Every process inside host ``i`` except its sshd listener."""
        listener = self._sshd[i].pid if i < len(self._sshd) else -1
        found = _ip("netns", "pids", self.namespaces[i], check=False).stdout.split()
        return [int(p) for p in found if int(p) != listener]

    def mpnet_pids(self, i: int) -> list[int]:
        """Processes inside host ``i`` that run mpnet: its own commands and the worker
        processes nannies spawn (``multiprocessing.spawn``)."""
        found = []
        for pid in self.pids(i):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"mpnet" in cmd or b"multiprocessing" in cmd:
                    found.append(pid)
        return found

    def link_down(self, i: int) -> None:
        _ip("-n", self.namespaces[i], "link", "set", "eth0", "down")

    def link_up(self, i: int) -> None:
        _ip("-n", self.namespaces[i], "link", "set", "eth0", "up")

    # --- tear-down ------------------------------------------------------------------

    def down(self) -> None:
        """Kill everything in the namespaces and remove them and the bridge. Idempotent."""
        for proc in self._sshd:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._sshd:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._sshd = []
        if self._up:
            for ns in self.namespaces:
                _kill_namespace(ns)
                _ip("netns", "del", ns, check=False)
            _ip("link", "del", self.bridge, check=False)
            self._up = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "TestHosts":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


try:
    import pytest
except ImportError:          # scripts/testhosts.py runs without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def hosts(request) -> TestHosts:
        """Three namespace hosts with sshd for the whole session (``MPNET_TEST_HOSTS``
        changes the count); skipped with the reason where they cannot be made."""
        why = unavailable()
        if why:
            pytest.skip(f"no namespace test hosts: {why}")
        made = TestHosts(int(os.environ.get("MPNET_TEST_HOSTS", "3")))
        request.addfinalizer(made.down)
        return made.up()
