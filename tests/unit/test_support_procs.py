"""The test harness's child processes leave no log file behind in /tmp (every suite run used
to leave a few redis-server logs), unless asked to keep them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD = """
from tests.support.procs import ManagedProcess
p = ManagedProcess([sys.executable, "-c", "print('hello from the child')"], name="probe")
p.start()
p.proc.wait(10)
assert "hello from the child" in p.log()
print(p.log_path)
"""


@pytest.mark.parametrize("keep", [False, True])
def test_a_managed_process_log_is_removed_at_exit_unless_kept(keep: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONITOR_TEST_KEEP_LOGS"}
    if keep:
        env["MONITOR_TEST_KEEP_LOGS"] = "1"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True)
    log = Path(out.stdout.strip().splitlines()[-1])
    assert log.name.startswith("probe-") and log.suffix == ".log"
    try:
        assert log.exists() is keep
    finally:
        log.unlink(missing_ok=True)
