"""Every ```python block of README.md and docs/*.md runs as pasted into a file.

Each block is written to a file of its own and run by a fresh interpreter, in an empty
folder with a HOME of its own (so no token file of the machine is read), on loopback.
A block that needs what a test machine lacks (ssh hosts, mpirun, a scheduler at an
address of the docs, certificates, GPUs, a server that runs until stopped) says so on
the line above its fence::

    <!-- no-run: needs a scheduler at 192.0.2.10 -->
    ```python

and is reported here as skipped with that reason (``pytest -rs`` lists them). Blocks of
other languages (shell, output, YAML) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 45.0          # seconds a block may run (a LocalCluster starts in ~0.5 s)

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*\Z", re.S)


def _blocks() -> list:
    found = []
    for path in FILES:
        text = path.read_text()
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            marks = []
            before = _NO_RUN.search(text[max(0, m.start() - 300):m.start()])
            if before:
                marks.append(pytest.mark.skip(reason=f"{where} no-run: {before.group(1)}"))
            found.append(pytest.param(m.group(1), id=where, marks=marks))
    return found


BLOCKS = _blocks()


def test_the_docs_have_blocks_to_run():
    runnable = [b for b in BLOCKS if not b.marks]
    assert len(runnable) >= 4, [b.id for b in BLOCKS]
    for block in BLOCKS:
        for mark in block.marks:       # a reason a reader can act on, not an empty tag
            assert len(mark.kwargs["reason"].split("no-run: ", 1)[1]) > 5, block.id


@pytest.mark.parametrize("code", BLOCKS)
def test_block_runs(code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / ".config"), "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
