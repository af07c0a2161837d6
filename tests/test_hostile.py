"""The CLI's contract under hostile input, checked with generated cases (hypothesis).

Every command run through the console entry point (`recsys.cli.main`, in-process) either
succeeds or prints exactly one line `error: …` and exits non-zero; it never prints a
traceback or an "internal error" (a bug), and a failing command changes nothing on disk.
Generated: logs with awkward shapes, corruptions of every file of a dataset folder and of a
run directory, and option values of every kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys import api
from recsys.cli import main
from recsys.data.dataset import Dataset

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same cases every CI run; a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def run(args: list[str]) -> tuple[int, str]:
    """Exit code and stderr of `recsys ARGS`, run through the console entry point."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) and a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_contract(args: list, root: Path, before: dict[str, str]) -> int:
    code, err = run(args)
    assert "Traceback" not in err, err
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
        assert "internal error" not in err, err
        assert snapshot(root) == before, f"{args} failed but changed files under {root}"
    return code


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny dataset and an MF run trained on it, the originals every case copies."""
    root = tmp_path_factory.mktemp("hostile")
    api.synth(root / "log.csv", n_users=40, n_items=30, n_intents=3, seed=0)
    api.prepare(root / "log.csv", root / "data", split="random:0.8", valid=0.2, seed=0)
    api.train(root / "data", root / "run", "mf", {"epochs": 2, "dim": 8}, progress=False)
    return root


def fresh_copy(trained: Path, tmp: Path) -> Path:
    """A copy of the dataset and run under `tmp`, the run pointing at the copied dataset."""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(trained, tmp)
    config = tmp / "run" / "config.json"
    config.write_text(config.read_text().replace(str(trained), str(tmp)))
    return tmp


TOKENS = st.sampled_from(
    ["1", "2", "007", "7", "-3", "1e3", "nan", "", " ", "é", "a,b", '"q"', "9" * 30, "0.5", "\t"]
)


@SETTINGS
@given(
    rows=st.lists(st.tuples(TOKENS, TOKENS, TOKENS), max_size=12),
    header=st.sampled_from(["user_id,item_id,rating", "user_id,item_id", "u,i,r", ""]),
    extra=st.sampled_from([[], ["--rating-col", "rating", "--min-rating", "4"], ["--kcore", "2"],
                           ["--split", "last:1"], ["--split", "random:1.5"], ["--valid", "-1"]]),
)  # fmt: skip
def test_generated_logs_prepare_or_fail_cleanly(tmp_path, rows, header, extra):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    body = "\n".join(",".join(row) for row in rows)
    (root / "log.csv").write_text(f"{header}\n{body}\n" if header else body)
    before = snapshot(root)
    code = assert_contract(
        ["data", "prepare", root / "log.csv", "--out", root / "ds", *extra], root, before
    )
    if code == 0:
        assert Dataset.load(root / "ds").train.nnz > 0


ARTIFACTS = ["data/splits.npz", "data/users.parquet", "data/items.parquet", "data/dataset.json",
             "run/config.json", "run/checkpoint.pt", "run/best.pt", "run/embeddings.npz",
             "run/metrics.json", "run/metrics.jsonl", "run/index.faiss"]  # fmt: skip
COMMANDS = [
    ["data", "info", "{data}"],
    ["evaluate", "{run}"],
    ["recommend", "{run}", "--user", "u01"],
    ["train", "{data}", "--out", "{run}", "--resume"],
]


ARRAY_EDITS = {
    "reverse": lambda a: a[::-1],
    "shift": lambda a: a + 10**6,
    "negate": lambda a: -a,
    "drop": lambda a: a[:-1],
    "float": lambda a: a.astype(float) + 0.5,
    "scramble": lambda a: np.random.default_rng(0).permutation(a),
}


def edit_arrays(data: bytes, at: float, edit: str) -> bytes:
    """An .npz whose arrays are intact as a file but one of them is edited: the damage a CRC
    cannot catch (a hand-edited or badly written file)."""
    with np.load(io.BytesIO(data)) as z:
        arrays = dict(z)
    key = sorted(arrays)[int(at * len(arrays))]
    arrays[key] = ARRAY_EDITS[edit](arrays[key])
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def corrupt(data: bytes, how: str, at: float, junk: bytes) -> bytes:
    cut = int(len(data) * at)
    if how == "truncate":
        return data[:cut]
    if how == "flip":
        return data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :] if data else junk
    if how == "splice":
        return data[:cut] + junk + data[cut + len(junk) :]
    return junk  # "replace"


@SETTINGS
@given(
    name=st.sampled_from(ARTIFACTS),
    how=st.sampled_from(["truncate", "flip", "splice", "replace", *(f"array-{e}" for e in ARRAY_EDITS)]),
    at=st.floats(0, 0.999),
    junk=st.sampled_from([b"", b"[]", b"{}", b'{"model": 1}', b"\x00" * 64, b"PK\x03\x04junk", b"[" * 3000]),
    command=st.sampled_from(COMMANDS),
)  # fmt: skip
def test_damaged_artifacts_fail_cleanly(trained, tmp_path, name, how, at, junk, command):
    root = fresh_copy(trained, tmp_path / "case")
    target = root / name
    if how.startswith("array-"):
        if target.suffix != ".npz":
            return
        target.write_bytes(edit_arrays(target.read_bytes(), at, how.removeprefix("array-")))
    else:
        target.write_bytes(corrupt(target.read_bytes(), how, at, junk))
    before = snapshot(root)
    args = [a.format(data=root / "data", run=root / "run") for a in command]
    assert_contract(args, root, before)


VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1.5", "nan", "inf", "-inf", "1e308", "abc", "", "1e20",
                     str(2**70), "0.0", "true", "[1]"]),
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)  # fmt: skip
TRAIN_OPTIONS = ["--lr", "--epochs", "--dim", "--batch-size", "--seed", "--patience",
                 "--eval-every", "--reg", "--sampling", "--device", "--layers", "--dropout",
                 "--k-unknown"]  # fmt: skip


@SETTINGS
@given(
    model=st.sampled_from(["mf", "lightgcn", "mostpop"]),
    option=st.sampled_from(TRAIN_OPTIONS),
    value=VALUES,
)
def test_generated_train_options_fail_cleanly(trained, tmp_path, model, option, value):
    root = fresh_copy(trained, tmp_path / "case")
    before = snapshot(root)
    args = ["train", root / "data", "--out", root / "new", "--model", model, "--no-progress"]
    code = assert_contract([*args, option, value, "--epochs", "1"] if option != "--epochs"
                           else [*args, option, value, "--max-minutes", "0.05"], root, before)  # fmt: skip
    if code == 0:
        assert (root / "new" / "metrics.json").is_file()


@SETTINGS
@given(
    command=st.sampled_from([
        ["evaluate", "{run}", "--k", "{v}"], ["evaluate", "{run}", "--split", "{v}"],
        ["recommend", "{run}", "--user", "u01", "--k", "{v}"],
        ["recommend", "{run}", "--user", "{v}"], ["recommend", "{run}", "--user", "u01", "--index", "{v}"],
        ["data", "synth", "--out", "{root}/s.csv", "--users", "{v}"],
        ["data", "synth", "--out", "{root}/s.csv", "--intents", "{v}"],
        ["benchmark", "--data", "{data}", "--out", "{root}/b", "--models", "{v}", "--budget-minutes", "0.01"],
        ["benchmark", "--data", "{data}", "--out", "{root}/b", "--budget-minutes", "{v}", "--models", "nope"],
        ["tune", "{data}", "--model", "mf", "--out", "{root}/t", "--budget-minutes", "{v}", "--trials", "0"],
        ["data", "prepare", "{root}/log.csv", "--out", "{v}"],
    ]),
    value=VALUES,
)  # fmt: skip
def test_generated_option_values_fail_cleanly(trained, tmp_path, command, value):
    root = fresh_copy(trained, tmp_path / "case")
    before = snapshot(root)
    args = [a.format(run=root / "run", data=root / "data", root=root, v=value) for a in command]
    with contextlib.chdir(root):  # a relative --out lands in the case's folder
        assert_contract(args, root, before)


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "prepare", "{root}/log.csv", "--out", "{root}/mine"], "holds files recsys did not write"),
        (["train", "{data}", "--out", "{root}/mine", "--model", "mf", "--overwrite"], "holds files recsys did not write"),
        (["data", "prepare", "{root}/log.csv", "--out", "{data}"], "already holds a recsys dataset folder; pass --overwrite"),
        (["data", "prepare", "{root}/log.csv", "--out", "{root}/log.csv"], "would overwrite the input"),
        (["data", "prepare", "{root}", "--out", "{root}"], "would overwrite the input"),
        (["train", "{data}", "--out", "{data}", "--model", "mf"], "would overwrite the input"),
        (["train", "{data}", "--out", "{run}", "--model", "mf", "--overwrite", "--lr", "nan"], "option 'lr' expects float"),
        (["train", "{data}", "--out", "{run}", "--resume", "--lr", "0.1"], "--resume cannot change lr"),
        (["evaluate", "{run}", "--split", "train"], "--split must be valid or test"),
        (["train", "{data}", "--out", "{root}/big", "--model", "lightgcn", "--dim", "4096", "--layers", "10",
          "--batch-size", "100000000"], "exceeds the"),
        (["train", "{data}", "--out", "{run}", "--model", "mf", "--overwrite", "--epochs", "1", "--dim", "100000"], "'dim' must be ≤ 4096"),
    ],
)  # fmt: skip
def test_refusals_name_the_problem_and_keep_every_file(trained, tmp_path, args, message):
    root = fresh_copy(trained, tmp_path / "case")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's own")
    before = snapshot(root)
    code, err = run([a.format(root=root, data=root / "data", run=root / "run") for a in args])
    assert code == 1 and err.count("error:") == 1 and message in err, err
    assert snapshot(root) == before


def test_overwrite_that_fails_keeps_the_previous_run(trained, tmp_path, monkeypatch):
    root = fresh_copy(trained, tmp_path / "case")
    before = snapshot(root)
    from recsys.train import loop

    def diverge(*args, **kwargs):
        raise api.RunError("training diverged (planted)")

    monkeypatch.setattr(loop, "finish", diverge)
    code, err = run(["train", root / "data", "--out", root / "run", "--model", "mf", "--overwrite",
                     "--epochs", "1"])  # fmt: skip
    assert code == 1 and "diverged (planted)" in err
    assert snapshot(root) == before  # the old run, whole; no temporary folder left


def test_a_failed_first_start_leaves_nothing_and_restarts_without_overwrite(
    trained, tmp_path, monkeypatch
):
    root = fresh_copy(trained, tmp_path / "case")
    from recsys.train import loop

    real = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: (_ for _ in ()).throw(api.RunError("planted")))
    code, _ = run(["train", root / "data", "--out", root / "new", "--model", "mf"])
    assert code == 1 and not (root / "new").exists()
    monkeypatch.setattr(loop, "fit", real)
    code, err = run(
        ["train", root / "data", "--out", root / "new", "--model", "mf", "--epochs", "1"]
    )
    assert code == 0, err


def test_resume_applies_a_new_epoch_count(trained, tmp_path):
    root = fresh_copy(trained, tmp_path / "case")
    code, err = run(["train", root / "data", "--out", root / "run", "--resume", "--epochs", "4",
                     "--patience", "0"])  # fmt: skip
    assert code == 0, err
    summary = api.RunDir(root / "run").read_summary()
    assert summary["epochs"] == 4
    assert api.RunDir(root / "run").read_config()["train"]["epochs"] == 4


def test_a_start_killed_mid_write_restarts_in_place(trained, tmp_path):
    # Killed while writing its first config.json: only atomic_path's temporary is left.
    root = fresh_copy(trained, tmp_path / "case")
    (root / "new").mkdir()
    (root / "new" / ".config.json.x1y2.tmp").write_text('{"model": "m')
    code, err = run(
        ["train", root / "data", "--out", root / "new", "--model", "mf", "--epochs", "1"]
    )
    assert code == 0, err
    assert not (root / "new" / ".config.json.x1y2.tmp").exists()


@pytest.mark.parametrize("damage", [b"", b"\x00" * 64, "flip"])
def test_a_damaged_ann_index_is_refused_before_faiss_reads_it(trained, tmp_path, damage):
    root = fresh_copy(trained, tmp_path / "case")
    assert run(["index", "build", root / "run", "--kind", "ivf"])[0] == 0
    index = root / "run" / "index-ivf.faiss"
    data = index.read_bytes()
    index.write_bytes(corrupt(data, "flip", 0.5, b"") if damage == "flip" else damage)
    before = snapshot(root)
    code, err = run(["recommend", root / "run", "--user", "u01", "--index", "ivf"])
    assert code == 1 and "does not match its audit" in err, err
    assert snapshot(root) == before


def test_claim_output_refuses_a_foreign_folder_naming_the_callers_flag(synth_dataset, tmp_path):
    from recsys.atomic import claim_output
    from recsys.errors import ConfigError

    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"did not write.*choose another --workdir"):
        claim_output(foreign, "dataset", reuse=True, flag="--workdir")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert claim_output(tmp_path / "new", "dataset") is False  # nothing there yet
    assert claim_output(synth_dataset, "dataset", reuse=True) is True  # a dataset: reused
