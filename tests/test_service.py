"""The HTTP service (recsys.service) through FastAPI's test client: every endpoint, every error."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys import api
from recsys.service import Holder, create_app
from recsys.serving import Model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FAST = {"epochs": 3, "lr": 0.01, "batch_size": 256, "dim": 16}


@pytest.fixture(scope="module")
def runs(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    api.train(synth_dataset, root / "mf", "mf", FAST, progress=False)
    api.train(synth_dataset, root / "als", "als", {"dim": 8, "iterations": 5}, progress=False)
    return root


@pytest.fixture(scope="module")
def client(runs):
    app = create_app(runs / "mf")
    with TestClient(app, raise_server_exceptions=False) as c:
        c.model = app.state.holder.model
        yield c


def post(client, path, body, status=200):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_recommend_known_user(client):
    model = client.model
    got = post(client, "/recommend", {"user_id": "u0001", "k": 5})
    ids, scores = model.recommend("u0001", k=5)
    assert got == {"user_id": "u0001", "item_ids": list(ids), "scores": pytest.approx(list(scores))}
    seen = set(model.dataset.items.raw(model.seen[model.dataset.users.index(["u0001"])[0]].indices))
    assert not set(got["item_ids"]) & seen
    unfiltered = post(client, "/recommend", {"user_id": "u0001", "k": 120, "exclude_seen": False})
    assert seen <= set(unfiltered["item_ids"])


def test_recommend_allow_list_and_extra_history(client):
    got = post(
        client,
        "/recommend",
        {"user_id": "u0002", "k": 2, "items": ["i0001", "i0002", "i0003"], "exclude_seen": False},
    )
    assert len(got["item_ids"]) == 2 and set(got["item_ids"]) <= {"i0001", "i0002", "i0003"}
    extra = post(
        client, "/recommend", {"user_id": "u0002", "k": 10, "history_extra": ["i0004", "i0005"]}
    )
    assert not {"i0004", "i0005"} & set(extra["item_ids"])
    ids, _ = client.model.recommend("u0002", k=10, history_extra=["i0004", "i0005"])
    assert extra["item_ids"] == list(ids)


def test_recommend_history_folds_in(client):
    got = post(client, "/recommend/history", {"item_ids": ["i0001", "i0002"], "k": 4})
    ids, scores = client.model.recommend_history(["i0001", "i0002"], k=4)
    assert got == {"item_ids": list(ids), "scores": pytest.approx(list(scores))}
    assert not {"i0001", "i0002"} & set(got["item_ids"]) and len(got["item_ids"]) == 4


def test_batch_and_similar(client):
    got = post(
        client,
        "/recommend/batch",
        {"requests": [{"user_id": "u0001", "k": 3}, {"user_id": "u0009", "k": 1}]},
    )
    assert [r["user_id"] for r in got["results"]] == ["u0001", "u0009"]
    assert got["results"][0] == post(client, "/recommend", {"user_id": "u0001", "k": 3})
    assert len(got["results"][1]["item_ids"]) == 1
    one = post(client, "/similar", {"item_id": "i0010", "k": 3})["results"]
    many = post(client, "/similar", {"item_ids": ["i0010", "i0011"], "k": 3})["results"]
    assert one[0]["item_ids"] == many[0]["item_ids"] and many[1]["item_id"] == "i0011"
    assert one[0]["scores"] == pytest.approx(many[0]["scores"], rel=1e-5)
    ids, scores = client.model.similar_items("i0010", k=3)
    assert one[0]["item_ids"] == list(ids) and "i0010" not in ids
    assert np.all(np.diff(one[0]["scores"]) <= 0) and max(one[0]["scores"]) <= 1 + 1e-6


def test_health_model_and_docs(client, runs):
    assert client.get("/health").json() == {"status": "ok", "model": "mf", "worker": os.getpid()}
    info = client.get("/model").json()
    assert info["run"] == str((runs / "mf").resolve()) and info["model"] == "mf"
    assert info["dataset_fingerprint"] == client.model.dataset.fingerprint
    assert (
        info["metrics"]["recall@20"] == api.RunDir(runs / "mf").read_summary()["test"]["recall@20"]
    )
    assert info["index"] == {"kind": "flat", "recall_at_k": 1.0}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/recommend/history", "/recommend/batch", "/similar", "/reload"} <= set(
        paths
    )
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/recommend", {"user_id": "nobody"}, 404, "user_id"),
        ("/recommend", {"user_id": "u0001", "k": 0}, 422, "k"),
        ("/recommend", {"user_id": "u0001", "k": "many"}, 422, "k"),
        ("/recommend", {"user_id": "u0001", "k": 100000}, 422, "k"),
        ("/recommend", {"user_id": ["u0001"]}, 422, "user_id"),
        ("/recommend", {"user_id": True}, 422, "user_id"),
        ("/recommend", {"k": 3}, 422, "user_id"),
        ("/recommend", {"user_id": "u0001", "colour": "red"}, 422, "colour"),
        ("/recommend", {"user_id": "u0001", "items": ["i0001", "zz"]}, 404, "items"),
        ("/recommend", {"user_id": "u0001", "history_extra": ["zz"]}, 404, "history_extra"),
        ("/recommend", {"user_id": "u0001", "exclude_seen": "perhaps"}, 422, "exclude_seen"),
        ("/recommend/history", {"item_ids": []}, 422, "item_ids"),
        ("/recommend/history", {"item_ids": ["zz"]}, 404, "item_ids"),
        ("/recommend/history", {"item_ids": ["i0001"], "items": ["zz"]}, 404, "items"),
        ("/recommend/batch", {"requests": []}, 422, "requests"),
        (
            "/recommend/batch",
            {"requests": [{"user_id": "u0001"}, {"user_id": "nobody"}]},
            404,
            "requests.1.user_id",
        ),
        ("/similar", {"item_id": "zz"}, 404, "item_id"),
        ("/similar", {"item_ids": ["i0001", "zz"]}, 404, "item_ids"),
        ("/similar", {"k": 3}, 422, "body"),
        ("/reload", {"run": "/no/such/run"}, 400, "run"),
        ("/recommend", [1, 2], 422, "body"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(client, path, body, status, field):
    got = post(client, path, body, status)
    assert got["field"] == field and "Traceback" not in got["error"]
    if status == 404:
        assert "zz" in got["error"] or "nobody" in got["error"]


def test_malformed_json_and_wrong_method(client):
    r = client.post(
        "/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["field"] == "body" and "JSON" in r.json()["error"]
    assert client.get("/recommend").status_code == 405
    assert client.post("/nowhere", json={}).status_code == 404


def test_unexpected_error_is_a_json_500_without_traceback(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.model, "recommend", broken)
    r = client.post("/recommend", json={"user_id": "u0001"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError)", "field": None}


def test_reload_swaps_the_model(runs):
    app = create_app(runs / "mf")
    with TestClient(app) as c:
        before = post(c, "/recommend", {"user_id": "u0001", "k": 5})
        old = app.state.holder.model
        info = post(c, "/reload", {"run": str(runs / "als")})
        assert info["model"] == "als" and c.get("/model").json()["model"] == "als"
        after = post(c, "/recommend", {"user_id": "u0001", "k": 5})
        ids, _ = app.state.holder.model.recommend("u0001", k=5)
        assert after["item_ids"] == list(ids) and after != before
        # the old object is untouched: requests holding it still answer from it
        assert before["item_ids"] == list(old.recommend("u0001", k=5)[0])
        assert post(c, "/reload", None)["model"] == "als"  # no body: the served run again


def test_workers_follow_a_reload_made_in_another_worker(runs, tmp_path):
    """Two apps sharing one state file stand for two uvicorn workers of one server."""
    state = tmp_path / "state.json"
    a, b = create_app(runs / "mf", shared=state), create_app(runs / "mf", shared=state)
    with TestClient(a) as ca, TestClient(b) as cb:
        assert post(ca, "/reload", {"run": str(runs / "als")})["model"] == "als"
        for _ in range(50):  # b polls every 0.5 s
            if cb.get("/model").json()["model"] == "als":
                break
            time.sleep(0.1)
        assert cb.get("/model").json()["model"] == "als"
        assert a.state.holder.token == b.state.holder.token
        # a worker started later (uvicorn replacing one) serves the reloaded run, not its first
        with TestClient(create_app(runs / "mf", shared=state)) as cc:
            assert cc.get("/model").json()["model"] == "als"


def test_a_follow_never_undoes_a_newer_reload(runs, tmp_path, monkeypatch):
    """Worker w starts following v's reload to ALS; a reload to MF lands on w meanwhile."""
    state = tmp_path / "state.json"
    w, v = Holder(runs / "mf", "flat", state), Holder(runs / "mf", "flat", state)
    real_load, started, release = Model.load, threading.Event(), threading.Event()

    def slow_load(run, kind="flat"):
        if threading.current_thread() is not threading.main_thread():  # w's follow
            started.set()
            release.wait(10)
        return real_load(run, kind)

    monkeypatch.setattr(Model, "load", staticmethod(slow_load))

    async def scenario():
        follower = asyncio.create_task(w.follow(every_s=0.01))
        v.reload(runs / "als")
        await asyncio.to_thread(started.wait, 10)
        w.reload(runs / "mf")  # newer than the reload w is following
        release.set()
        for _ in range(150):  # w must never serve the older reload, not even for a moment
            served.add(w.model.name)
            await asyncio.sleep(0.002)
        follower.cancel()

    served = set()
    asyncio.run(scenario())
    assert started.is_set() and served == {"mf"}
    assert w.token == json.loads(state.read_text())["token"]


def test_a_run_that_fails_to_load_is_logged_and_the_old_model_kept(runs, tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"run": str(tmp_path / "gone"), "token": "t1"}))
    w = Holder(runs / "mf", "flat", state)  # a worker started after a reload to a bad run
    assert w.model.name == "mf" and "does not load" in caplog.text

    async def scenario():
        follower = asyncio.create_task(w.follow(every_s=0.01))
        state.write_text(json.dumps({"run": str(tmp_path / "gone2"), "token": "t2"}))
        await asyncio.sleep(0.2)
        assert w.model.name == "mf" and "could not be followed" in caplog.text
        state.write_text(json.dumps({"run": str(runs / "als"), "token": "t3"}))
        await asyncio.sleep(0.5)  # still following after the failure
        follower.cancel()

    asyncio.run(scenario())
    assert w.model.name == "als" and w.token == "t3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run, *extra: str) -> tuple[subprocess.Popen, str]:
    """`recsys serve RUN EXTRA…` on a free port, once /health answers: (process, base url)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", str(run), "--port", str(port), "--threads", "1", *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return server, url


def test_recsys_serve_answers_and_reloads_on_sighup(runs):
    server, url = start_server(runs / "mf")
    try:
        got = httpx.post(url + "/recommend", json={"user_id": "u0001", "k": 3}).json()
        assert len(got["item_ids"]) == 3
        server.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert httpx.post(url + "/recommend", json={"user_id": "u0001", "k": 3}).json() == got
    finally:
        server.terminate()
        err = server.communicate(timeout=30)[1]
    assert "SIGHUP: reloaded" in err, err


def test_recsys_serve_workers_all_follow_one_reload(runs):
    server, url = start_server(runs / "mf", "--workers", "2")

    def models_seen(n: int) -> set:
        # a fresh connection per request, so the kernel spreads them over both workers
        return {httpx.get(url + "/model").json()["model"] for _ in range(n)}

    def pids_seen(n: int) -> set:
        return {httpx.get(url + "/health").json()["worker"] for _ in range(n)}

    try:
        assert models_seen(10) == {"mf"}
        assert len(pids_seen(40)) == 2  # both workers answer
        assert httpx.post(url + "/reload", json={"run": str(runs / "als")}).json()["model"] == "als"
        time.sleep(2.0)  # the other worker polls the shared state every 0.5 s
        assert models_seen(40) == {"als"}
    finally:
        server.terminate()
        server.communicate(timeout=30)
