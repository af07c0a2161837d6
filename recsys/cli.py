"""Thin typer layer: parse options, call one api function, print the result or a one-line error."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path

import typer

from recsys import api
from recsys.atomic import claim_output, removed_on_failure, write_marker
from recsys.errors import ConfigError, RecsysError
from recsys.models import MODELS, model_class
from recsys.train.config import TrainParams

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False, help=__doc__
)
data_app = typer.Typer(
    no_args_is_help=True, help="Prepare, inspect and synthesise interaction data."
)
app.add_typer(data_app, name="data")

SAMPLE_LOG = Path(__file__).resolve().parents[1] / "data" / "sample.csv"


def user_errors(fn):
    """Print a RecsysError as one line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecsysError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def emit(obj: dict, as_json: bool) -> None:
    """JSON on stdout (and nothing else there) for scripts, or an indented listing for people."""
    if as_json:
        typer.echo(json.dumps(obj, default=float))
        return

    def show(value, indent=0):
        for key, v in value.items():
            if isinstance(v, dict):
                typer.echo(" " * indent + f"{key}:")
                show(v, indent + 2)
            else:
                typer.echo(" " * indent + f"{key}: {round(v, 4) if isinstance(v, float) else v}")

    show(obj)


def threads_option():
    return typer.Option(
        None,
        "--threads",
        help="threads to compute with [the cores this process may use, less those other "
        "processes keep busy, re-checked every epoch]",
    )


def use_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    from recsys.threads import use_threads as apply

    apply(threads)


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k values must be positive, got {text!r}")
    return ks


@app.callback()
def setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")):
    """recsys: train graph recommenders on interaction logs, evaluate them, serve top-K."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO, format="%(message)s"
    )


@data_app.command("prepare")
@user_errors
def data_prepare(
    source: Path = typer.Argument(
        ..., help="log file (csv/tsv/parquet/.inter) or pre-split folder"
    ),
    out: Path = typer.Option(..., "--out", help="dataset folder to write"),
    format: str | None = typer.Option(
        None, help="csv|tsv|parquet|recbole|lightgcn|split-csv (default: by extension)"
    ),
    user_col: str = typer.Option("user_id", help="user id column"),
    item_col: str = typer.Option("item_id", help="item id column"),
    rating_col: str | None = typer.Option(None, help="rating column (needed for --min-rating)"),
    time_col: str | None = typer.Option(
        None, help="timestamp column (needed for last:/time: splits)"
    ),
    min_rating: float | None = typer.Option(None, help="keep interactions with rating >= this"),
    kcore: int = typer.Option(0, help="iteratively keep users and items with >= k interactions"),
    split: str | None = typer.Option(
        None,
        help="random:F | last:N | time:F | given [random:0.8 for a log, given for a pre-split folder]",
    ),
    valid: float = typer.Option(
        0.1, help="fraction of each user's training interactions held out for validation (0: none)"
    ),
    seed: int = typer.Option(0, help="seed of the random split"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace the dataset folder in --out (nothing else)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Read an interaction log, filter and split it, and save a dataset folder."""
    summary = api.prepare(
        source, out, overwrite, format=format, user_col=user_col, item_col=item_col, rating_col=rating_col, time_col=time_col,
        min_rating=min_rating, kcore=kcore, split=split, valid=valid, seed=seed,
    )  # fmt: skip
    emit(summary, as_json)


@data_app.command("info")
@user_errors
def data_info(
    dataset: Path = typer.Argument(..., help="dataset folder"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Users, items, interactions per split, density, degree and popularity quantiles."""
    emit(api.info(dataset), as_json)


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Option(..., "--out", help="log file to write (.csv, .tsv or .parquet)"),
    users: int = typer.Option(1000, help="number of users"),
    items: int = typer.Option(500, help="number of items"),
    intents: int = typer.Option(8, help="planted latent intents"),
    seed: int = typer.Option(0, help="random seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the file in --out"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Generate a log with planted intents and power-law popularity (makes data/sample.csv)."""
    summary = api.synth(out, overwrite, n_users=users, n_items=items, n_intents=intents, seed=seed)
    emit(summary, as_json)


def extra_options(args: list[str]) -> dict[str, str]:
    """`--name value` / `--name=value` pairs left over by typer: the model's own hyperparameters."""
    options, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args):
            key, value = arg[2:], args[i + 1]
            i += 2
        else:
            raise ConfigError(f"option {arg} needs a value")
        options[key] = value
    return options


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def train(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="dataset folder from 'recsys data prepare'"),
    out: Path = typer.Option(..., "--out", help="run directory to write"),
    model: str | None = typer.Option(None, help=f"one of: {', '.join(MODELS)}"),
    epochs: int | None = typer.Option(None, help="maximum epochs [100]"),
    batch_size: int | None = typer.Option(None, help="BPR triples per step [2048, or the model's]"),
    sampling: str | None = typer.Option(
        None,
        help="edge: each interaction once per epoch | user: users equally often [edge, or the model's]",
    ),
    lr: float | None = typer.Option(None, help="Adam learning rate [1e-3]"),
    dim: int | None = typer.Option(None, help="embedding size"),
    layers: int | None = typer.Option(None, help="propagation layers (graph models)"),
    eval_every: int | None = typer.Option(None, help="validate every N epochs [1]"),
    patience: int | None = typer.Option(
        None, help="validations without improvement before stopping; 0 never [10]"
    ),
    device: str | None = typer.Option(None, help="auto|cpu|cuda [auto]"),
    seed: int | None = typer.Option(None, help="random seed [0]"),
    config: Path | None = typer.Option(
        None, help="TOML/JSON file of options (same names as the flags)"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in --out"),
    progress: bool = typer.Option(True, help="progress bar on stderr"),
    threads: int | None = threads_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Train a model; model hyperparameters (see 'recsys models') are passed as --name value."""
    use_threads(threads)
    given = dict(
        epochs=epochs,
        batch_size=batch_size,
        sampling=sampling,
        lr=lr,
        dim=dim,
        layers=layers,
        eval_every=eval_every,
        patience=patience,
        device=device,
        seed=seed,
    )
    options = {k: v for k, v in given.items() if v is not None} | extra_options(ctx.args)
    from recsys.train.distributed import world

    if world()[0] > 0:  # torchrun: rank 0 alone logs and prints
        logging.getLogger().setLevel(logging.WARNING)
    summary = api.train(
        dataset, out, model, options, config, resume=resume, overwrite=overwrite, progress=progress
    )
    if world()[0] == 0:
        emit(summary, as_json)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def tune(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="dataset folder with a validation split"),
    model: str = typer.Option(..., help=f"one of: {', '.join(MODELS)}"),
    out: Path = typer.Option(..., "--out", help="tuning folder (study, trials, best.toml)"),
    budget_minutes: float = typer.Option(15.0, help="wall-clock minutes for the whole search"),
    trials: int | None = typer.Option(None, help="stop after this many trials (all processes)"),
    storage: str | None = typer.Option(
        None, help="Optuna database URL shared by several workers [sqlite in --out]"
    ),
    seed: int = typer.Option(0, help="seed of the sampler and of every trial"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a tuning folder in --out"),
    threads: int | None = threads_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Search a model's hyperparameters on validation (Optuna TPE, median pruning); test once.

    Extra --name value options are fixed for every trial (e.g. --device cpu --epochs 100).
    """
    from recsys import tune as tuning  # optuna's import is only paid by this command

    if budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {budget_minutes}")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be ≥ 1, got {trials}")
    use_threads(threads)
    printed: list[dict] = []

    def table(row: dict) -> None:  # the header comes with the first trial, after validation
        if not printed:
            typer.echo(tuning.TABLE_HEADER, err=True)
        printed.append(row)
        tuning.print_table_row(row)

    summary = tuning.tune(
        dataset, out, model, budget_minutes, trials, storage, extra_options(ctx.args), seed,
        overwrite, table=table,
    )  # fmt: skip
    if as_json:
        emit(summary, True)
        return
    best = summary["best"]
    typer.echo(f"{model}: {summary['trials']} in {summary['seconds'] / 60:.1f} min")
    if best is None:
        typer.echo("no trial finished: raise --budget-minutes")
        return
    gain = best["gain_over_defaults"]
    if gain and gain["trial"] != best["trial"]:
        typer.echo(
            f"kept the defaults: trial {gain['trial']} beat them by {gain['mean']:+.4f} ± "
            f"{gain['se']:.4f} on validation, within {tuning.NOISE_SE:g} standard errors"
        )
    typer.echo(f"chosen trial {best['trial']}: {best['options']}")
    typer.echo(
        f"valid recall@20 {best['valid']['recall@20']:.4f}  ndcg@20 {best['valid']['ndcg@20']:.4f}"
    )
    if best["test"]:
        typer.echo(
            f"test  recall@20 {best['test']['recall@20']:.4f}  ndcg@20 {best['test']['ndcg@20']:.4f}"
        )
    typer.echo(
        f"setting: {best['config']}  (recsys train DATA --out RUN --config {best['config']})"
    )
    typer.echo(f"weights: {best['run_dir']}")


@app.command()
@user_errors
def evaluate(
    run: Path = typer.Argument(..., help="run directory"),
    split: str = typer.Option("test", help="valid|test"),
    k: str = typer.Option("10,20,40", help="cut-offs, comma-separated"),
    by_degree: bool = typer.Option(
        False, "--by-degree", help="also metrics by user-degree quintile"
    ),
    exclude_valid: bool = typer.Option(
        False, "--exclude-valid", help="when testing, also exclude validation items from ranking"
    ),
    data: Path | None = typer.Option(
        None, help="dataset folder (default: the one the run was trained on)"
    ),
    threads: int | None = threads_option(),
    as_json: bool = typer.Option(False, "--json"),
):
    """Full-ranking Recall, NDCG, Precision, HitRate, MRR @K and coverage; training items excluded."""
    use_threads(threads)
    result = api.evaluate_run(run, split, parse_ks(k), by_degree, exclude_valid, data)
    if as_json:
        emit(result, True)
        return
    emit({"metrics": result["metrics"]}, False)
    if by_degree:
        metrics = [f"recall@{k_}" for k_ in parse_ks(k)] + [f"ndcg@{k_}" for k_ in parse_ks(k)]
        typer.echo("\ndegree      users  " + "  ".join(f"{m:>10}" for m in metrics))
        for g in result["by_degree"]:
            typer.echo(
                f"{g['min_degree']:>4}-{g['max_degree']:<5} {g['n_users']:>6}  "
                + "  ".join(f"{g[m]:>10.4f}" for m in metrics)
            )


@app.command()
@user_errors
def recommend(
    run: Path = typer.Argument(..., help="run directory"),
    user: list[str] | None = typer.Option(None, "--user", help="raw user id (repeatable)"),
    users_file: Path | None = typer.Option(None, help="file with one raw user id per line"),
    k: int = typer.Option(20, help="items per user"),
    output: Path | None = typer.Option(
        None, help="write .csv, .parquet or .json instead of printing"
    ),
    index: str = typer.Option(
        "flat", help="flat (exact) | ivf | hnsw (built once by 'recsys index build')"
    ),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="per item, the user's top intents and their share of the score (dccf)",
    ),
    all_users: bool = typer.Option(
        False, "--all-users", help="every user, streamed into --output FOLDER as Parquet parts"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the --all-users folder"),
    threads: int | None = threads_option(),
):
    """Top-K unseen items for users given by raw id (or for every user, with --all-users)."""
    use_threads(threads)
    if k < 1:
        raise ConfigError(f"--k must be positive, got {k}")
    if all_users:
        if output is None or user or users_file or explain:
            raise ConfigError(
                "--all-users takes --output FOLDER and no --user/--users-file/--explain"
            )
        done = api.recommend_all(run, output, k, index, overwrite=overwrite)
        typer.echo(
            f"wrote {done['recommendations']} recommendations for {done['users']} users to "
            f"{output} ({done['parts']} Parquet parts)",
            err=True,
        )
        return
    ids = list(user or [])
    if users_file is not None:
        if not users_file.is_file():
            raise ConfigError(f"{users_file}: no such file")
        try:
            text = users_file.read_text()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{users_file}: not UTF-8 text (byte {e.start})") from None
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ConfigError("no users given: pass --user ID (repeatable) or --users-file FILE")
    if k < 1:
        raise ConfigError(f"--k must be positive, got {k}")
    trained = api.TrainedModel.load(run, index)
    if index != "flat":
        audit = trained.index_audit
        typer.echo(
            f"{index} index: recall@{audit['k']} {audit['recall_at_k']:.4f} against exact search",
            err=True,
        )
    recs = trained.recommend(ids, k, explain)
    if output is not None:
        api.write_table(recs, output)
        typer.echo(
            f"wrote {recs.height} recommendations for {len(ids)} users to {output}", err=True
        )
    else:
        with_pl_config(lambda: typer.echo(recs))


def with_pl_config(fn):
    import polars as pl

    with pl.Config(tbl_rows=200, fmt_str_lengths=200, tbl_hide_dataframe_shape=True):
        fn()


@app.command()
@user_errors
def models(name: str | None = typer.Argument(None, help="show one model's options")):
    """List models and their hyperparameters (flags and config keys)."""
    for model in [name] if name else list(MODELS):
        try:
            cls = model_class(model)
        except ConfigError as e:
            if name:
                raise
            typer.echo(f"{model}: unavailable ({e})")
            continue
        defaults = {
            **{
                f.name: f.default
                for f in dataclasses.fields(TrainParams)
                if f.default is not dataclasses.MISSING
            },
            **cls.train_defaults,
        }
        typer.echo(
            f"{model}:  (training defaults: "
            + ", ".join(f"{k}={defaults[k]}" for k in ("batch_size", "sampling", "lr", "epochs"))
            + ")"
        )
        for f in dataclasses.fields(cls.Params):
            aliases = "".join(f" / --{a}" for a in f.metadata.get("aliases", ()))
            typer.echo(
                f"  --{f.name.replace('_', '-')}{aliases}  {f.default}   {f.metadata.get('help', '')}"
            )


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(
        Path("runs/demo"), "--out", help="folder for the dataset, runs and recommendations"
    ),
    model: str = typer.Option("lightgcn", help="model to train"),
    epochs: int = typer.Option(30, help="maximum epochs"),
    threads: int | None = threads_option(),
):
    """The quick start: prepare data/sample.csv, train, evaluate on test, recommend for 5 users."""
    use_threads(threads)
    model_class(model)  # an unknown model fails before anything is written
    if epochs < 1:
        raise ConfigError(f"--epochs must be ≥ 1, got {epochs}")
    if not SAMPLE_LOG.is_file():
        raise ConfigError(
            f"{SAMPLE_LOG}: the bundled sample is missing; make it with 'recsys data synth --out {SAMPLE_LOG}'"
        )
    claim_output(out, "demo", reuse=True)
    with removed_on_failure(out):
        write_marker(out, "demo")
        data_dir, run_dir = out / "data", out / model
        summary = api.prepare(
            SAMPLE_LOG,
            data_dir,
            overwrite=True,
            rating_col="rating",
            time_col="timestamp",
            min_rating=4,
            split="random:0.8",
            valid=0.1,
            seed=0,
        )
        typer.echo(
            f"dataset: {summary['users']} users, {summary['items']} items, {summary['interactions']}",
            err=True,
        )
        for name in ("mostpop", model):
            result = api.train(
                data_dir,
                out / name,
                name,
                {"epochs": epochs} if name == model else {},
                overwrite=True,
                progress=False,
            )
            typer.echo(
                f"{name:>9}  test "
                + "  ".join(
                    f"{m} {result['test'][m]:.4f}"
                    for m in ("recall@20", "ndcg@20", "precision@20", "hit@20")
                )
            )
        trained = api.TrainedModel.load(run_dir)
        users = trained.dataset.users.raw(range(5)).to_list()
        recs = trained.recommend(users, k=10)
        api.write_table(recs, out / "recommendations.csv")
        typer.echo(
            f"recommendations for {', '.join(map(str, users))} written to {out / 'recommendations.csv'}"
        )


@app.command()
@user_errors
def benchmark(
    data: Path = typer.Option(
        SAMPLE_LOG, "--data", help="dataset folder, or a log / pre-split folder to prepare first"
    ),
    models: str = typer.Option(
        "mostpop,als,bpr,mf,lightgcn,lightgcl,dccf", help="comma-separated model names"
    ),
    budget_minutes: float = typer.Option(60.0, help="tuning minutes for all models together"),
    out: Path = typer.Option(Path("results/benchmark"), "--out", help="results folder"),
    seed: int = typer.Option(0, help="seed of every run"),
    threads: int | None = threads_option(),
):
    """Tune each model on validation within a shared budget, test the chosen setting once;
    write results.md/.csv, PNG plots and run manifests."""
    # Imported here: matplotlib's import would slow every other command's start.
    from recsys.benchmark import run_benchmark

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    names = [m.strip() for m in models.split(",") if m.strip()]
    rows = run_benchmark(data, out, names, budget_minutes, seed=seed, threads=threads)
    for row in rows:
        test = row.get("summary", {}).get("test") or {}
        typer.echo(
            f"{row['model']:>9}  "
            + (
                f"test recall@20 {test['recall@20']:.4f}  ndcg@20 {test['ndcg@20']:.4f}"
                if test
                else row["status"]
            )
            + (f"  ⚠ {row['flag']}" if row.get("flag") else "")
        )
    typer.echo(f"results in {out / 'results.md'}")


index_app = typer.Typer(no_args_is_help=True, help="Approximate (ANN) indexes of a run.")
app.add_typer(index_app, name="index")


@index_app.command("build")
@user_errors
def index_build(
    run: Path = typer.Argument(..., help="run directory"),
    kind: str = typer.Option(..., help="ivf | hnsw (flat: the exact index, audited as 1.0)"),
    nlist: int | None = typer.Option(None, help="ivf: clusters [4·√items]"),
    nprobe: int | None = typer.Option(
        None, help="ivf: clusters searched per query [the least reaching --target-recall]"
    ),
    hnsw_m: int = typer.Option(32, help="hnsw: neighbours per node"),
    ef_search: int | None = typer.Option(
        None, help="hnsw: candidates kept per search [the least reaching --target-recall]"
    ),
    target_recall: float = typer.Option(
        0.95, help="audited recall@k that chooses --nprobe / --ef-search when not given"
    ),
    k: int = typer.Option(20, help="cut-off of the recall audit"),
    threads: int | None = threads_option(),
):
    """Build a run's ANN index once, measure its recall@k against exact search, store both."""
    use_threads(threads)
    if k < 1 or hnsw_m < 2 or any(v is not None and v < 1 for v in (nprobe, nlist, ef_search)):
        raise ConfigError("--k, --nprobe, --nlist, --ef-search must be ≥ 1 and --hnsw-m ≥ 2")
    if not 0 < target_recall <= 1:
        raise ConfigError(f"--target-recall must be in (0, 1], got {target_recall}")
    audit = api.build_run_index(
        run, kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, k=k, ef_search=ef_search,
        target_recall=target_recall,
    )  # fmt: skip
    searched = {"ivf": "nprobe", "hnsw": "ef_search"}.get(kind)
    typer.echo(
        f"{kind} index written to {run}: recall@{k} {audit['recall_at_k']:.4f} against exact "
        f"search on {audit['audit_users']} users"
        + (f" with {searched} {audit['params'][searched]}" if searched else "")
        + f", built in {audit['build_seconds']:.1f} s"
    )


@app.command()
@user_errors
def serve(
    run: Path = typer.Argument(..., help="run directory"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    workers: int = typer.Option(1, help="server processes"),
    index: str = typer.Option("flat", help="flat (exact) | ivf | hnsw (built by 'index build')"),
    threads: int | None = threads_option(),
):
    """Serve a run over HTTP (FastAPI on uvicorn; OpenAPI docs at /docs)."""
    from recsys.service import serve as run_server  # imported here: fastapi loads slowly

    use_threads(threads)
    if workers < 1:
        raise ConfigError(f"--workers must be ≥ 1, got {workers}")
    run_server(run, index, host=host, port=port, workers=workers)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: every outcome is a result, or one line `error: …` on stderr.

    Exit codes: 0 success, 1 a bad input or artifact (recsys's own errors, unreadable or
    unwritable paths, anything unexpected), 2 a malformed command line (unknown command or
    option, a value of the wrong type), 130 interrupted. A traceback is printed only with
    RECSYS_TRACEBACK=1, for bug reports.
    """
    try:
        # Not standalone: click hands back typer.Exit's code instead of exiting.
        result = app(args=argv, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as e:  # from a command (user_errors) or --help
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        if isinstance(e.__cause__, EOFError):  # click turns an escaped EOFError into Abort
            print(f"error: internal error EOFError: {e.__cause__} (report it)", file=sys.stderr)
            code = 1
        else:
            print("error: interrupted", file=sys.stderr)
            code = 130
    except typer.exceptions.TyperException as e:  # click's usage errors, as typer bundles them
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        print(f"error: {where}{one_line(e.format_message())}", file=sys.stderr)
        code = getattr(e, "exit_code", 2)
    except UnicodeDecodeError as e:  # a text input (ids file, log, config) that is not UTF-8
        print(
            f"error: an input file is not UTF-8 text ({e.reason} at byte {e.start})",
            file=sys.stderr,
        )
        code = 1
    except OSError as e:  # a path that cannot be read or written: name it, no traceback
        name = f"{e.filename}: " if e.filename else ""
        print(f"error: {name}{e.strerror or one_line(str(e))}", file=sys.stderr)
        code = 1
    except MemoryError:
        print("error: out of memory; use a smaller --batch-size or --dim", file=sys.stderr)
        code = 1
    except Exception as e:  # a bug: still one line, with what a report needs
        if os.environ.get("RECSYS_TRACEBACK"):
            raise
        print(
            f"error: internal error {type(e).__name__}: {one_line(str(e))} "
            "(rerun with RECSYS_TRACEBACK=1 and report it)",
            file=sys.stderr,
        )
        code = 1
    if argv is None:
        sys.exit(code)
    return code


def one_line(text: str) -> str:
    return " ".join(text.split())[:500]
