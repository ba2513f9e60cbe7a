"""The suite's own guards (tests/conftest.py): a unit test may not start a process, and no test
may leave a file in the source tree."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers import NOT_WATCHED, written_since


def test_a_unit_test_that_starts_a_process_fails_naming_it():
    with pytest.raises(AssertionError, match="started .*python.*: mark it integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.integration
def test_an_integration_test_may_start_one():
    assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"


def test_files_written_after_the_start_are_found(tmp_path):
    (tmp_path / "old.txt").write_text("before")
    t0 = time.time() + 0.01
    time.sleep(0.02)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "artifact.png").write_bytes(b"after")
    for skipped in NOT_WATCHED:
        (tmp_path / skipped).mkdir(exist_ok=True)
        (tmp_path / skipped / "cache").write_text("tools")
    assert written_since(tmp_path, t0) == ["build/artifact.png"]
