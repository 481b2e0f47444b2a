"""``make test`` runs hack/real-setup.sh in the background; the real tier waits on its status file
(no root needed: plain files and a child process)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import wait_for_real_setup


def test_no_status_file_means_a_run_by_hand() -> None:
    wait_for_real_setup(None)


def test_waits_while_the_setup_runs_then_goes_on(tmp_path: Path) -> None:
    status = tmp_path / "real-setup.status"
    setup = subprocess.Popen(["sleep", "30"])
    status.write_text(f"running {setup.pid}\n")

    def finish() -> None:
        time.sleep(1.5)
        status.write_text("ok\n")
        setup.kill()

    threading.Thread(target=finish).start()
    start = time.monotonic()
    wait_for_real_setup(str(status), poll=0.1)
    assert time.monotonic() - start >= 1.0
    setup.wait()


def test_a_failed_setup_fails_the_tier_with_its_log(tmp_path: Path) -> None:
    status = tmp_path / "real-setup.status"
    status.write_text("failed 1\n")
    (tmp_path / "real-setup.log").write_text("[images] build of trainer failed\n")
    with pytest.raises(pytest.fail.Exception, match=r"failed 1(.|\n)*build of trainer failed"):
        wait_for_real_setup(str(status), poll=0.1)


def test_a_setup_that_died_without_a_word_fails_the_tier(tmp_path: Path) -> None:
    status = tmp_path / "real-setup.status"
    gone = subprocess.Popen(["true"])
    gone.wait()
    status.write_text(f"running {gone.pid}\n")
    with pytest.raises(pytest.fail.Exception, match="running"):
        wait_for_real_setup(str(status), poll=0.1)


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    status = tmp_path / "real-setup.status"
    status.write_text(f"running {os.getpid()}\n")  # alive for as long as the test runs
    with pytest.raises(pytest.fail.Exception, match="running"):
        wait_for_real_setup(str(status), timeout=0.5, poll=0.1)
