from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_notebook_outputs_are_not_committed():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stale = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not stale, f"clear the outputs of cells {stale} before committing"


def test_quickstart_notebook_runs_on_the_sample(tmp_path, monkeypatch):
    if not (ROOT / "data" / "sample.csv").is_file():
        pytest.skip(
            "data/sample.csv is missing; make it with 'recsys data synth --out data/sample.csv'"
        )
    # The kernel inherits the environment: two epochs per model, runs outside the repository.
    monkeypatch.setenv("RECSYS_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("RECSYS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    for model in ("mostpop", "lightgcn", "lightgcl"):
        assert (tmp_path / model / "metrics.json").is_file(), model
    text = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "lightgcl: best epoch" in text and "u0000 has seen" in text
