import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from recsys import threads
from recsys.cli import app


def test_fixed_and_automatic_thread_counts(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert threads.rebalance() == 1  # a fixed count is kept
        # automatic: all allowed cores when nothing else runs, one fewer per busy core
        monkeypatch.setattr(threads.CoreWatch, "others_busy", lambda self: 0.0)
        assert threads.use_threads(None) == len(threads.allowed_cpus())
        monkeypatch.setattr(threads.CoreWatch, "others_busy", lambda self: 99.0)
        assert threads.rebalance() == 1 and torch.get_num_threads() == 1
    finally:
        threads.use_threads(before)


def test_core_watch_sees_a_busy_process():
    if len(threads.allowed_cpus()) < 2 or threads._busy_seconds([0]) is None:
        pytest.skip("needs /proc/stat and two cores")
    watch = threads.CoreWatch()
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()+1.5\nwhile time.time()<t: pass"]
    )
    busy.wait()
    # one core busy for the whole window (others may add to it; this process adds nothing)
    assert watch.others_busy() > 0.6


def test_bad_thread_count_is_one_line_error(synth_dataset, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(synth_dataset),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "mf",
            "--threads",
            "0",
        ],
    )
    assert result.exit_code == 1 and result.output.strip() == "error: --threads must be ≥ 1, got 0"
    assert not (tmp_path / "r").exists()
