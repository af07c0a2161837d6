"""The memory and time estimate: its formula by hand, and its peak against a measured run."""

import json
import os
import platform
import subprocess
import sys

import pytest

from recsys import api, malloc
from recsys.errors import ConfigError
from recsys.train import estimate as est
from recsys.train import loop
from recsys.train.config import resolve_config
from recsys.train.estimate import available_bytes, estimate

MIB = 2**20


def test_small_graph_peak_is_fixed_costs_plus_the_evaluation_block():
    # 1000 users, 500 items, 10k edges, d = 8, L = 2, b = 100: activations 4·1500·8·4·2 =
    # 384 000 and batch rows 4·100·8·6 = 19 200 bytes, both below the score block, all
    # 1000 x 500 scores (2 MB) held three times.
    got = estimate(1000, 500, 10_000, 8, 2, 100, "lightgcn", steps_per_epoch=10)
    fixed = 300 * MIB + 12 * 10_000 + 40 * 10_000 + 16 * 1500 + 4 * 1500 * 8 * 4
    assert got["peak_bytes"] == fixed + 3 * 2_000_000 == 321_308_800
    # 10 steps of C_E·(10 000·8·2) + C_N·(1500·8·3)
    seconds = 10 * (est.SECONDS_PER_EDGE_DIM * 160_000 + est.SECONDS_PER_NODE_DIM * 36_000)
    assert got["epoch_seconds"] == pytest.approx(seconds)


def test_large_graph_peak_counts_activations_per_layer_and_model():
    # 800k users + 160k items, 11.5M edges, d = 64, L = 3, b = 115k (the 16M log).
    nodes, edges, dim, batch = 960_000, 11_500_000, 64, 115_000
    fixed = 300 * MIB + 52 * edges + 16 * nodes + 16 * nodes * dim
    for model, per_layer in (("lightgcn", 4), ("lightgcl", 8), ("dccf", 12)):
        step = 4 * nodes * dim * per_layer * 3 + 24 * batch * dim
        got = estimate(800_000, 160_000, edges, dim, 3, batch, model, steps_per_epoch=100)
        assert got["peak_bytes"] == fixed + step
    lightgcn = estimate(800_000, 160_000, edges, dim, 3, batch, "lightgcn", 100)
    # 100·(C_E·11.5M·64·3 + C_N·960k·64·4)
    expected = 100 * (
        est.SECONDS_PER_EDGE_DIM * edges * dim * 3 + est.SECONDS_PER_NODE_DIM * nodes * dim * 4
    )
    assert lightgcn["epoch_seconds"] == pytest.approx(expected)


def test_time_is_linear_in_steps_and_models_cost_in_order():
    args = (50_000, 10_000, 1_000_000, 64, 3, 2048)
    one = estimate(*args, "lightgcn", steps_per_epoch=1)["epoch_seconds"]
    assert estimate(*args, "lightgcn", 40)["epoch_seconds"] == pytest.approx(40 * one)
    costs = [estimate(*args, m, 1)["epoch_seconds"] for m in ("lightgcn", "lightgcl", "dccf")]
    assert costs == sorted(costs) and costs[0] < costs[2]


def test_a_model_without_propagation_ignores_layers_and_the_graph():
    mf = estimate(1000, 500, 10_000, 8, 3, 100, "mf", 10)
    assert mf == estimate(1000, 500, 10_000, 8, 0, 100, "mf", 10)
    assert mf["peak_bytes"] == 300 * MIB + 12 * 10_000 + 16 * 1500 + 4 * 1500 * 8 * 4 + 6_000_000
    assert mf["epoch_seconds"] == pytest.approx(10 * est.SECONDS_PER_NODE_DIM * 1500 * 8)


def test_available_bytes_is_below_physical_memory(monkeypatch):
    total = est.meminfo_available()
    if total is None:
        pytest.skip("no /proc/meminfo on this system")
    assert 0 < available_bytes() <= total
    limits = {"/sys/fs/cgroup/memory.max": 2 * MIB * 1024, "/sys/fs/cgroup/memory.current": MIB}
    monkeypatch.setattr(est, "read_int", limits.get)
    assert available_bytes() == min(total, 2 * MIB * 1024 - MIB)


def test_read_int_treats_an_unlimited_cgroup_as_no_value(tmp_path):
    (tmp_path / "max").write_text("max\n")
    (tmp_path / "n").write_text("123\n")
    assert est.read_int(str(tmp_path / "max")) is None
    assert est.read_int(str(tmp_path / "n")) == 123
    assert est.read_int(str(tmp_path / "missing")) is None


TRAIN_ONE_EPOCH = """
import json, sys
import torch
from recsys import api
torch.set_num_threads(1)
info = api.info(sys.argv[1] + "/ds")
summary = api.train(sys.argv[1] + "/ds", sys.argv[1] + "/run", "lightgcn",
                    {"epochs": 1, "dim": 32}, progress=False)
print(json.dumps({"info": info, "summary": summary}))
"""


def test_peak_estimate_is_within_2x_of_a_measured_lightgcn_run(tmp_path):
    # Training alone in a fresh process, so the peak RSS is the run's, not the test session's
    # nor the log generator's.
    api.synth(tmp_path / "log.csv", n_users=2000, n_items=800, seed=0)
    api.prepare(tmp_path / "log.csv", tmp_path / "ds")
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_ONE_EPOCH, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    info, summary = out["info"], out["summary"]
    nnz, batch = info["interactions"]["train"], summary["batch_size"]
    got = estimate(info["users"], info["items"], nnz, 32, 3, batch, "lightgcn", -(-nnz // batch))
    measured = summary["peak_rss_mib"] * MIB
    assert measured / 2 <= got["peak_bytes"] <= 2 * measured, (got, summary["peak_rss_mib"])


def test_training_keeps_freed_memory_only_where_the_larger_peak_fits(synth_dataset, monkeypatch):
    from recsys.data.dataset import Dataset

    ds = Dataset.load(synth_dataset)
    config = resolve_config("lightgcn", ("test", {"dim": 16}))
    batch = config.train.batch_size
    need = estimate(ds.n_users, ds.n_items, ds.train.nnz, 16, 3, batch, "lightgcn",
                    -(-ds.train.nnz // batch))["peak_bytes"]  # fmt: skip
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda keep: calls.append(keep) or True)
    for have, kept in ((need * 2, True), (need * 1.2, False)):
        monkeypatch.setattr(loop, "available_bytes", lambda have=have: int(have))
        loop.check_memory(config, ds)
        assert calls.pop() is kept
    monkeypatch.setattr(loop, "available_bytes", lambda: need - 1)
    with pytest.raises(ConfigError, match="--dim, --layers or --batch-size"):
        loop.check_memory(config, ds)
    assert not calls


FREE_64_MIB = """
import re, sys
import torch
from recsys import malloc
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(malloc.keep_freed_memory(sys.argv[1] == "keep"))
block = torch.empty(16 * 2**20)
block.fill_(1)
before = rss()
del block
print(before - rss())
"""


def freed_mib(mode: str, **env: str) -> tuple[str, int]:
    """In a fresh process: whether the setting applied, and the MiB given back by freeing 64 MiB."""
    clean = {k: v for k, v in os.environ.items() if k not in malloc.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", FREE_64_MIB, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_stays_in_the_process_only_when_kept():
    assert freed_mib("return") == ("True", pytest.approx(64, abs=8))  # glibc's default: unmapped
    assert freed_mib("keep") == ("True", pytest.approx(0, abs=8))  # kept for the next step
    # The user's own malloc settings, or RECSYS_KEEP_FREED=0, are left alone.
    assert freed_mib("keep", RECSYS_KEEP_FREED="0") == ("False", pytest.approx(64, abs=8))
    assert freed_mib("keep", MALLOC_MMAP_MAX_="65536") == ("False", pytest.approx(64, abs=8))


def test_the_sampled_softmax_adds_its_scores_and_bounds_their_memory():
    # the 16M log's batch: 115k rows × 1,025 scores are scored in blocks of 2^24
    args = (800_000, 160_000, 11_500_000, 64, 3, 115_000, "lightgcn", 100)
    bpr, softmax = estimate(*args), estimate(*args, softmax_negatives=1024)
    extra = 100 * est.SECONDS_PER_SCORE_DIM * 115_000 * 1024 * 64
    assert softmax["epoch_seconds"] - bpr["epoch_seconds"] == pytest.approx(extra)
    assert softmax["peak_bytes"] - bpr["peak_bytes"] == 6 * 2**24  # float32 and bfloat16 blocks
    # a batch of 7,297 rows (gowalla's) fits in one block
    args = (800_000, 160_000, 11_500_000, 64, 3, 7297, "lightgcn", 100)
    gap = estimate(*args, softmax_negatives=1024)["peak_bytes"] - estimate(*args)["peak_bytes"]
    assert gap == 6 * 7297 * 1025


def test_a_batch_smaller_than_m_scores_only_its_own_negatives():
    # a batch of 100 rows shares its 100 negatives, not M = 1,024
    args = (800_000, 160_000, 11_500_000, 64, 3, 100, "lightgcn", 100)
    gap = (
        estimate(*args, softmax_negatives=1024)["epoch_seconds"] - estimate(*args)["epoch_seconds"]
    )
    assert gap == pytest.approx(100 * est.SECONDS_PER_SCORE_DIM * 100 * 100 * 64)
