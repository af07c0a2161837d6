"""Budgeted hyperparameter search on the validation split, with Optuna.

    >>> from recsys.tune import tune
    >>> tune("data/ml", "tune/ml-lightgcl", "lightgcl", budget_minutes=15)["best"]["options"]

Each trial is one run of the shared training loop (`recsys.train.loop.train`) on the dataset
folder, with the options Optuna's TPE sampler draws from the model's `search_space` (declared
in the model's own file) on top of the model's defaults. The loop reports the validation metric
after every evaluation, and a median pruner stops a trial that sits below the median of the
earlier trials at the same epoch; a trial whose loss diverges is pruned as well. The first
trial of a new study is the defaults themselves, so tuning never ends below them. A budget
too short to train the defaults to early stopping in their half is too short to compare
settings: the defaults then continue for the whole budget, and the study ends with them.

The best of many trials beats the defaults on validation by luck as well as by merit, so it
is chosen only when its gain is more than noise: the mean per-user difference of the
validation metric, best trial against the defaults, must exceed NOISE_SE standard errors;
otherwise the study keeps the defaults, and says so.

Test is never seen by a trial (`test=False`); it is evaluated once, at the end, on the chosen
trial's weights. The study lives in `DIR/study.db` (SQLite) unless `storage` names another
database URL, so an interrupted study resumes and several processes or machines can work on
one study (Optuna's own distributed mode). DIR holds `tune.json` (the summary and marker),
`best.toml` (the chosen setting, for `recsys train --config`) and `trials/NNNN/`, the run
directories of the best trial and of the defaults (the others are removed as they finish: a
cheap model runs thousands of trials in a budget, each with a checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from recsys.atomic import atomic_write, claim_output, write_json
from recsys.data.dataset import Dataset
from recsys.errors import ConfigError, RecsysError
from recsys.evaluate import evaluate
from recsys.models import Search, model_class
from recsys.train import loop
from recsys.train.config import option_table, resolve_config
from recsys.train.rundir import RunDir

log = logging.getLogger("recsys")

MARKER = "tune.json"
# Pruning waits this many epochs: validation often dips before it rises (see loop.should_stop).
PRUNE_WARMUP_EPOCHS = 5
# Options a trial sets for itself, never tuned nor written into best.toml.
RUN_ONLY = ("max_minutes", "device")
DEFAULTS_DIR = "0000"  # trials/0000: trial 0 of a new study is the defaults
# The best trial replaces the defaults only when its paired per-user gain on validation exceeds
# this many standard errors (the README's rule for noise). Measured on the matrix's studies
# (validation gain in SE → the test difference it became): the sample's DCCF +1.0 → -2.4 SE
# (0.7384 against the defaults' 0.7504), ml-100k's MF +1.5 → +1.6 SE, DCCF +1.8 → +0.5 SE,
# LightGCL +0.3 → +0.0 SE: the guard costs MF a real gain there and spares DCCF a loss.
NOISE_SE = 2.0


def search_space(model: str, fixed: dict[str, Any] | None = None) -> dict[str, Search]:
    """`model`'s declared space less the options the user fixed (under any of their names)."""
    table = option_table(model)
    pinned = {
        table[k.replace("-", "_")][1].name for k in fixed or {} if k.replace("-", "_") in table
    }
    return {
        key: space
        for key, space in model_class(model).search_space.items()
        if key not in table or table[key][1].name not in pinned
    }


def suggest(trial: optuna.Trial, model: str, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Draw one value for every option in `model`'s search space that is not fixed."""
    table = option_table(model)
    options: dict[str, Any] = {}
    for key, space in search_space(model, fixed).items():
        if key not in table:
            raise ConfigError(f"search space of {model!r} names unknown option {key!r}")
        kind = table[key][1].type
        if space.choices:
            options[key] = trial.suggest_categorical(key, list(space.choices))
        elif kind in ("int", int):
            options[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
        else:
            options[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
    return options


def default_point(
    model: str, fixed: dict[str, Any] | None = None, derived: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The model's defaults (with those `derived` from the data) for the keys of its search
    space: the study's first trial."""
    config = resolve_config(model, ("dataset", derived or {}))
    flat = {**config.to_dict()["train"], **config.to_dict()["params"]}
    table = option_table(model)
    return {key: flat[table[key][1].name] for key in search_space(model, fixed)}


def tune(
    dataset_dir: str | Path,
    out: str | Path,
    model: str,
    budget_minutes: float = 15.0,
    trials: int | None = None,
    storage: str | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    table=None,
) -> dict:
    """Search `model`'s hyperparameters on `dataset_dir`'s validation split within a budget.

    Args:
        dataset_dir: a prepared dataset folder with a validation split.
        out: the tuning folder (created; an existing one of the same model and dataset resumes).
        model: registry name.
        budget_minutes: wall-clock minutes for the whole search (trials are capped to fit).
        trials: stop after this many trials in this study (all processes together).
        storage: an Optuna database URL (default: sqlite in `out`).
        options: fixed options for every trial (flags of `recsys train`), e.g. `device`.
        seed: seed of the sampler and of every trial's run.
        overwrite: replace a previous tuning folder in `out`.
        table: a callable given each finished trial's row (the CLI prints them live).

    Returns:
        The summary written to `out/tune.json`: best options, their validation and test
        metrics, the trials' counts and rows.
    """
    started = time.perf_counter()
    ds = Dataset.load(dataset_dir)
    if ds.valid is None:
        raise ConfigError(
            f"{dataset_dir}: has no validation split to tune on (prepare it with --valid > 0)"
        )
    fixed = dict(options or {})
    derived = ("dataset", model_class(model).data_defaults(ds.train))
    # refuses bad options before any trial
    metric = resolve_config(model, derived, ("command line", fixed)).train.metric.lower()
    out = claim_folder(Path(out), model, ds.fingerprint, overwrite, Path(dataset_dir))
    if not (out / MARKER).is_file():  # marks the folder as a study from its first trial on
        write_json(out / MARKER, {"model": model, "dataset_fingerprint": ds.fingerprint})
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{model}-{ds.fingerprint}",
        storage=url,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=PRUNE_WARMUP_EPOCHS),
    )
    space = search_space(model, fixed)
    if not study.trials and space:
        study.enqueue_trial(default_point(model, fixed, derived[1]))
    deadline = started + 60 * budget_minutes
    n_trials = trials if space else 1

    def objective(trial: optuna.Trial) -> float:
        drawn = suggest(trial, model, fixed)
        remaining = (deadline - time.perf_counter()) / 60
        # The search must see several settings: the defaults may use half of the budget,
        # any other trial a third.
        share = 2 if trial.number == 0 else 3
        cap = max(min(budget_minutes / share, remaining), 0.05)
        config = resolve_config(
            model,
            derived,
            ("tuner", {"seed": seed, **drawn}),
            ("command line", fixed | {"max_minutes": cap}),
        )
        run_dir = out / "trials" / f"{trial.number:04d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a trial of this study that died before finishing

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"below the median at epoch {epoch} ({score:.4f})")

        t0 = time.perf_counter()
        try:
            summary = loop.train(
                ds, dataset_dir, config, run_dir, progress=False, on_validation=report, test=False
            )
            wall, left = time.perf_counter() - t0, deadline - time.perf_counter()
            if (
                trial.number == 0
                and summary.get("stopped_by") == "time budget"
                and left > wall / summary["epochs"]
            ):
                # The defaults were still improving when their half ran out: a budget that
                # cannot train them to the end cannot compare settings either (every other
                # trial would stop early too, and lose to the defaults given the whole budget).
                # The rest of it continues them, in training seconds at this trial's ratio.
                log.warning("the defaults were still improving after %d epochs: continuing them "
                            "for the rest of the budget", summary["epochs"])  # fmt: skip
                more = summary["train_seconds"] + left * summary["train_seconds"] / wall
                config = resolve_config(
                    model,
                    derived,
                    ("tuner", {"seed": seed, **drawn}),
                    ("command line", fixed | {"max_minutes": more / 60}),
                )
                # Not reported to the pruner: the defaults' run must survive to the end.
                summary = loop.train(ds, dataset_dir, config, run_dir, resume=True,
                                     progress=False, test=False)  # fmt: skip
                trial.set_user_attr("reason", "defaults continued for the whole budget")
                trial.study.stop()  # no time is left for another trial to finish
        except (optuna.TrialPruned, RecsysError) as e:
            shutil.rmtree(run_dir, ignore_errors=True)
            trial.set_user_attr("reason", str(e))
            # A diverging loss is a pruned trial too: the search learns to avoid its region.
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("epochs", summary["epochs"])
        return summary["valid"][config.train.metric.lower()]

    # The best run directory so far, removed when a trial of this process beats it. Only
    # folders under this OUT/trials are ever removed: with a shared --storage, the study's
    # best may be another process's run, elsewhere or on another machine.
    trials_dir = (out / "trials").resolve()
    done = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    best_dir = Path(study.best_trial.user_attrs["run_dir"]) if done else None
    kept = [best_dir] if best_dir and best_dir.resolve().parent == trials_dir else []

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        best = study.best_trial if complete or kept else None  # one query, not every trial
        if complete:
            # Only the best trial's run is kept (test is evaluated on it): a cheap model
            # runs thousands of trials, and every run directory holds a checkpoint.
            # The defaults' run (trial 0) stays too: the best is checked against it at the end.
            run_dir = Path(trial.user_attrs["run_dir"])
            if best.number == trial.number:
                for old in kept:
                    if old.name != DEFAULTS_DIR:
                        shutil.rmtree(old, ignore_errors=True)
                kept[:] = [run_dir]
            elif trial.number != 0:
                shutil.rmtree(run_dir, ignore_errors=True)
        if table is not None:
            table(trial_row(trial, best.value if best else None))

    remaining = deadline - time.perf_counter()
    started_trials = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    callbacks = [on_trial]
    if n_trials:
        # counts the trials of every process working on the study, not only this one's
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=None))
    if remaining > 0 and (not n_trials or len(started_trials) < n_trials):
        # The trials' per-epoch lines would drown the table; --verbose keeps them.
        level = log.level
        if not log.isEnabledFor(logging.DEBUG):
            log.setLevel(logging.WARNING)
        try:
            study.optimize(objective, timeout=remaining, callbacks=callbacks, catch=())
        finally:
            log.setLevel(level)
    summary = summarise(study, model, ds, dataset_dir, out, fixed, seed, metric)
    summary["seconds"] = time.perf_counter() - started
    write_json(out / MARKER, summary)
    return summary


def claim_folder(out: Path, model: str, fingerprint: str, overwrite: bool, dataset: Path) -> Path:
    """`out`, made or reused: only an empty folder or a tuning folder of recsys's own."""
    holds = claim_output(out, "tuning", reuse=True, inputs=[dataset])
    if holds and overwrite:
        shutil.rmtree(out)
    elif holds and (out / MARKER).is_file():
        previous = json.loads((out / MARKER).read_text())
        if (previous.get("model"), previous.get("dataset_fingerprint")) != (model, fingerprint):
            raise ConfigError(
                f"{out}: holds a study of {previous.get('model')!r} on another dataset or "
                "model; pass --overwrite to replace it or choose a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


def trial_row(trial: optuna.trial.FrozenTrial, best: float | None) -> dict:
    """One line of the live table: number, state, value, best so far, seconds, options."""
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "best": best,
        "epochs": trial.user_attrs.get("epochs", trial.last_step),
        "seconds": seconds,
        "options": trial.params,
        "reason": trial.user_attrs.get("reason"),
    }


def format_row(row: dict) -> str:
    value = "—" if row["value"] is None else f"{row['value']:.4f}"
    best = "—" if row["best"] is None else f"{row['best']:.4f}"
    seconds = "—" if row["seconds"] is None else f"{row['seconds']:.0f}"
    options = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["options"].items()
    )
    return f"{row['trial']:>5}  {row['state']:<8} {value:>7} {best:>7} {row['epochs'] or 0:>6} {seconds:>6}  {options}"


TABLE_HEADER = (
    f"{'trial':>5}  {'state':<8} {'valid':>7} {'best':>7} {'epochs':>6} {'sec':>6}  options"
)


def summarise(
    study: optuna.Study,
    model: str,
    ds: Dataset,
    dataset_dir: str | Path,
    out: Path,
    fixed: dict,
    seed: int,
    metric: str,
) -> dict:
    """Best trial, its test metrics (evaluated here, once), best.toml, and every trial's row."""
    trials = study.trials  # read once: with a database storage each read is a query
    states = [t.state.name.lower() for t in trials]
    rows, best_so_far = [], None
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            best_so_far = t.value if best_so_far is None else max(best_so_far, t.value)
        rows.append(trial_row(t, best_so_far))
    summary: dict[str, Any] = {
        "model": model,
        "dataset": str(Path(dataset_dir).resolve()),
        "dataset_fingerprint": ds.fingerprint,
        "metric": f"valid {metric}",
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "rows": rows,
    }
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        summary["best"] = None
        return summary
    best = max(completed, key=lambda t: t.value)
    defaults = next((t for t in completed if t.number == 0), None)
    gain = gain_over_defaults(best, defaults, ds, metric)
    if gain is not None and gain["mean"] <= NOISE_SE * gain["se"]:
        log.warning(
            "trial %d beat the defaults on valid %s by %+.4f ± %.4f (%.1f standard errors), "
            "within noise: keeping the defaults",
            best.number, metric, gain["mean"], gain["se"], gain["mean"] / max(gain["se"], 1e-12),
        )  # fmt: skip
        best = defaults
    run = RunDir(best.user_attrs["run_dir"])
    config = run.read_config()
    options = {
        "model": model,
        "train": {k: v for k, v in config["train"].items() if k not in RUN_ONLY},
        "params": config["params"],
    }
    atomic_write(out / "best.toml", lambda p: p.write_text(to_toml(options, best, metric)))
    users, items = run.load_embeddings()
    test = (
        evaluate(users, items, ds.train, ds.test, tuple(config["train"]["eval_k"])).metrics
        if ds.test is not None
        else None
    )
    summary["best"] = {
        "trial": best.number,
        "gain_over_defaults": gain,
        "options": best.params,
        "valid": run.read_summary()["valid"],
        "test": test,
        "run_dir": str(run.path),
        "config": str(out / "best.toml"),
        "seed": seed,
        "fixed": fixed,
    }
    return summary


def gain_over_defaults(
    best: optuna.trial.FrozenTrial,
    defaults: optuna.trial.FrozenTrial | None,
    ds: Dataset,
    metric: str,
) -> dict | None:
    """The best trial's paired per-user gain in the validation metric over the defaults' trial:
    {"trial", "mean", "se", "users"}; None when the best is the defaults or either run is gone
    (a study resumed from another process's storage)."""
    if defaults is None or best.number == defaults.number:
        return None
    runs = [RunDir(t.user_attrs["run_dir"]) for t in (best, defaults)]
    if not all((run.path / "embeddings.npz").is_file() for run in runs):
        return None
    k = int(metric.rsplit("@", 1)[1])
    scores = [evaluate(*run.load_embeddings(), ds.train, ds.valid, (k,)).per_user[metric]
              for run in runs]  # fmt: skip
    diff = scores[0] - scores[1]
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return {"trial": best.number, "mean": float(diff.mean()), "se": se, "users": len(diff)}


def to_toml(options: dict, best: optuna.trial.FrozenTrial, metric: str) -> str:
    """The chosen setting as TOML for `recsys train --config` (flat values only)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"cannot write {v!r} to TOML")
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = [
        f"# recsys tune: trial {best.number}, valid {metric} {best.value:.4f}",
        f"model = {value(options['model'])}",
    ]
    for section in ("train", "params"):
        lines += ["", f"[{section}]"] + [f"{k} = {value(v)}" for k, v in options[section].items()]
    return "\n".join(lines) + "\n"


def print_table_row(row: dict) -> None:
    print(format_row(row), file=sys.stderr, flush=True)
