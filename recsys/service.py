"""The HTTP service: one in-memory `recsys.serving.Model` behind FastAPI, run by uvicorn.

    recsys serve RUN --port 8000            # or: uvicorn with create_app(run_dir, index_kind)

POST /recommend          {user_id, k, exclude_seen, items, history_extra} → {user_id, item_ids, scores}
POST /recommend/history  {item_ids, k, exclude_seen, items}  a user known by history (fold-in)
POST /recommend/batch    {requests: [/recommend bodies]} → {results: [...]}
POST /similar            {item_id | item_ids, k} → {results: [{item_id, item_ids, scores}]}
POST /reload             {run}  load a run (default: the served one again) and swap it in
GET  /health (status, model, worker pid), GET /model (run, dataset fingerprint, model, metrics, index and its recall)
GET  /docs, /openapi.json (FastAPI's own)

Why FastAPI: request bodies are declared once as pydantic models, which gives validation that
names the offending field, the OpenAPI schema and the docs page for free; uvicorn is its
standard ASGI server.

Errors are JSON `{"error": one line, "field": name}`: 404 for an unknown user or item id, 422
for a body that is malformed or ill-typed or out of range (FastAPI's validation), 400 for a
run that cannot be loaded. An unexpected exception becomes a 500 with no traceback (logged on
the server). Reloading builds the new Model completely, then swaps one reference; a request
reads the reference once, so requests in flight finish on the old model and none fails.
SIGHUP reloads the served run from disk the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from recsys.atomic import write_json
from recsys.errors import DataError, RecsysError
from recsys.serving import Model

log = logging.getLogger("recsys.service")

MAX_K = 1000
MAX_BATCH = 1000
#: seconds uvicorn keeps an idle connection open (its default is 5). One load run with 5 s had
#: 2 connections closed under a client (ReadError in 10,000 requests); runs with 75 s had none.
#: The cause is not pinned down; a client that reuses a connection the server is closing is
#: the usual suspect, and a longer idle limit makes that rarer.
KEEP_ALIVE_S = 75


def raw_id(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a raw id (a string or an integer), got {type(value).__name__}")
    return value


RawId = Annotated[
    int | str,
    PlainValidator(raw_id),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
K = Annotated[int, Field(ge=1, le=MAX_K, description="items to return")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Body):
    user_id: RawId
    k: K = 20
    exclude_seen: bool = True
    items: list[RawId] | None = Field(None, description="allow-list: choose only from these")
    history_extra: list[RawId] | None = Field(
        None, description="items the user interacted with since training (folded in)"
    )


class HistoryRequest(Body):
    item_ids: list[RawId] = Field(min_length=1)
    k: K = 20
    exclude_seen: bool = True
    items: list[RawId] | None = None


class BatchRequest(Body):
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class SimilarRequest(Body):
    item_id: RawId | None = None
    item_ids: list[RawId] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    k: K = 10

    @model_validator(mode="after")
    def one_of(self) -> SimilarRequest:
        if (self.item_id is None) == (self.item_ids is None):
            raise ValueError("give exactly one of item_id and item_ids")
        return self


class ReloadRequest(Body):
    run: str | None = Field(None, description="run directory (default: the one served)")


class Recommendation(BaseModel):
    user_id: int | str | None = None
    item_ids: list[int | str]
    scores: list[float]


class Recommendations(BaseModel):
    results: list[Recommendation]


class FieldError(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field = status, field


@contextlib.contextmanager
def about(field: str, status: int = 404) -> Iterator[None]:
    """Turn a RecsysError raised inside into a `status` reply naming `field`."""
    try:
        yield
    except RecsysError as e:
        raise FieldError(status if isinstance(e, DataError) else 400, field, str(e)) from None


class Holder:
    """The served model: one reference, replaced whole on reload.

    With several worker processes (`shared` set), a reload in one worker is written to the
    shared state file (run path and a fresh token) before it is swapped in; every other worker
    polls that file (`follow`) and loads the same run, so all of them move to it within a
    second or so of the reply, each still answering from its old model until its new one is
    complete. A load is swapped in only if no newer reload happened meanwhile, so workers
    converge on the last reload whatever the order of events.
    """

    def __init__(self, run_dir: str | Path, index_kind: str, shared: Path | None = None):
        self.index_kind, self.shared = index_kind, shared
        self.lock = threading.Lock()  # reload runs in a worker thread, follow on the loop
        state = self._state() if shared else {}
        self.token = state.get("token")
        try:
            # a worker (re)started after a reload serves the reloaded run, not the first one
            self.model = Model.load(state.get("run", run_dir), index_kind)
        except RecsysError as e:
            if "run" not in state:
                raise
            log.error("the reloaded run in %s does not load (%s); serving %s", shared, e, run_dir)
            self.model = Model.load(run_dir, index_kind)

    def reload(self, run_dir: str | Path | None = None) -> Model:
        model = Model.load(run_dir or self.model.run.path, self.index_kind)
        with self.lock:
            if self.shared:  # written first: a failed write leaves every worker as it was
                token = uuid.uuid4().hex
                write_json(self.shared, {"run": str(model.run.path), "token": token})
                self.token = token
            self.model = model  # one reference assignment: atomic for every reader
        return model

    def _state(self) -> dict:
        """The shared state file's {run, token}; {} before the first reload."""
        try:
            return json.loads(self.shared.read_text())
        except (OSError, ValueError):
            return {}

    async def follow(self, every_s: float = 0.5) -> None:
        """Load the run another worker reloaded (see the class docstring); runs until cancelled.

        A run that fails to load is logged and not retried until the next reload.
        """
        failed = None
        while True:
            await asyncio.sleep(every_s)
            token = (state := self._state()).get("token")
            if token in (None, self.token, failed):
                continue
            try:
                model = await run_in_threadpool(Model.load, state["run"], self.index_kind)
            except Exception as e:  # noqa: BLE001 - the follower must outlive any failed load
                log.error("reload in another worker could not be followed: %s", e)
                failed = token
                continue
            with self.lock:
                if self._state().get("token") == token:  # else a newer reload won meanwhile
                    self.model, self.token = model, token
                    log.info("followed a reload in another worker: %s", model.run.path)


def recommendation(model: Model, req: RecommendRequest, prefix: str = "") -> dict:
    with about(prefix + "user_id"):
        model.user_index([req.user_id])
    for field in ("items", "history_extra"):
        if getattr(req, field):
            with about(prefix + field):
                model.item_index(getattr(req, field))
    ids, scores = model.recommend(
        req.user_id, req.k, req.exclude_seen, req.items, req.history_extra
    )
    return {"user_id": req.user_id, **listed(ids, scores)}


def listed(ids, scores) -> dict:
    keep = scores > float("-inf")
    return {"item_ids": ids[keep].tolist(), "scores": scores[keep].tolist()}


def create_app(
    run_dir: str | Path, index_kind: str = "flat", shared: Path | None = None
) -> FastAPI:
    """The FastAPI app serving `run_dir` through its `index_kind` index (loaded now).

    `shared`: the state file the worker processes of one server share (`Holder`).
    """
    holder = Holder(run_dir, index_kind, shared)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(sighup()))
        follower = loop.create_task(holder.follow()) if shared else None
        yield
        if follower:
            follower.cancel()

    async def sighup() -> None:
        try:
            model = await run_in_threadpool(holder.reload)
            log.info("SIGHUP: reloaded %s", model.run.path)
        except RecsysError as e:
            log.error("SIGHUP: reload failed, still serving the old model: %s", e)

    app = FastAPI(
        title="recsys", description=__doc__.split("\n\n")[0], lifespan=lifespan, version="1"
    )
    app.state.holder = holder

    @app.exception_handler(FieldError)
    async def field_error(request: Request, e: FieldError) -> JSONResponse:
        return JSONResponse({"error": str(e), "field": e.field}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": "body"
                if err["type"] == "json_invalid"
                else ".".join(str(p) for p in err["loc"][1:]) or "body",
                "message": err["msg"],
            }
            for err in e.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return JSONResponse(
            {
                "error": f"{first['field']}: {first['message']}",
                "field": first["field"],
                "errors": errors,
            },
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(
            {"error": f"internal error ({type(e).__name__})", "field": None}, status_code=500
        )

    # The hot endpoints answer with a ready JSONResponse: FastAPI then skips re-validating and
    # re-encoding the reply through its response model (response_model keeps the OpenAPI schema).
    @app.post("/recommend", response_model=Recommendation)
    async def recommend(req: RecommendRequest) -> JSONResponse:
        return JSONResponse(recommendation(holder.model, req))

    @app.post("/recommend/batch", response_model=Recommendations)
    async def recommend_batch(req: BatchRequest) -> JSONResponse:
        model = holder.model
        results = [recommendation(model, r, f"requests.{i}.") for i, r in enumerate(req.requests)]
        return JSONResponse({"results": results})

    @app.post("/recommend/history")
    async def recommend_history(req: HistoryRequest) -> dict:
        model = holder.model
        with about("item_ids"):
            model.item_index(req.item_ids)
        if req.items:
            with about("items"):
                model.item_index(req.items)
        return listed(*model.recommend_history(req.item_ids, req.k, req.exclude_seen, req.items))

    @app.post("/similar")
    async def similar(req: SimilarRequest) -> dict:
        model = holder.model
        field, ids = (
            ("item_id", [req.item_id]) if req.item_ids is None else ("item_ids", req.item_ids)
        )
        with about(field):
            found, scores = model.similar_items(ids, req.k)
        return {"results": [{"item_id": i, **listed(f, s)} for i, f, s in zip(ids, found, scores)]}

    @app.post("/reload")
    async def reload(req: ReloadRequest | None = None) -> dict:
        run = req.run if req else None
        with about("run", status=400):
            model = await run_in_threadpool(holder.reload, run)
        return model.info()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": holder.model.name, "worker": os.getpid()}

    @app.get("/model")
    async def model_info() -> dict:
        return holder.model.info()

    return app


def app_from_env() -> FastAPI:
    """The app for uvicorn's worker processes (`--workers` > 1): run, index, state from env."""
    return create_app(
        os.environ["RECSYS_SERVE_RUN"],
        os.environ.get("RECSYS_SERVE_INDEX", "flat"),
        Path(os.environ["RECSYS_SERVE_STATE"]),
    )


def serve(run_dir: str | Path, index_kind: str, host: str, port: int, workers: int) -> None:
    """Load the run (a bad one fails here, before listening), then run uvicorn until stopped."""
    import uvicorn

    app = create_app(run_dir, index_kind)
    model = app.state.holder.model
    audit = model.index_audit
    log.info(
        "serving %s (%s) with the %s index (recall@%s %.4f) on http://%s:%d (docs at /docs)",
        model.run.path, model.name, index_kind, audit.get("k", "k"), audit["recall_at_k"], host, port,
    )  # fmt: skip
    if workers == 1:
        uvicorn.run(
            app,
            host=host,
            port=port,
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        return
    with tempfile.TemporaryDirectory(prefix="recsys-serve-") as state_dir:
        os.environ["RECSYS_SERVE_RUN"] = str(Path(run_dir).resolve())
        os.environ["RECSYS_SERVE_INDEX"] = index_kind
        os.environ["RECSYS_SERVE_STATE"] = str(Path(state_dir) / "state.json")
        uvicorn.run(
            "recsys.service:app_from_env", factory=True, host=host, port=port, workers=workers,
            access_log=False, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S,
        )  # fmt: skip
