"""Resolved run configuration: loop options + the model's own hyperparameters.

Keys form one flat namespace shared by CLI flags and config files (TOML or JSON): training
options (below) and the fields of the model's `Params` dataclass, with the paper's names as
aliases. Precedence, lowest first: defaults, the model's `train_defaults`, the config file,
the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from recsys.errors import ConfigError
from recsys.models import model_class
from recsys.models.base import SOFTMAX_FROM_DENSITY, RankingLoss
from recsys.train.sampler import BPRSampler


@dataclass
class TrainParams:
    epochs: int = field(
        default=300,
        metadata={
            "help": "maximum training epochs (passes over the training interactions)",
            "min": 1,
        },
    )
    batch_size: int = field(default=2048, metadata={"help": "BPR triples per step", "min": 1})
    sampling: str = field(
        default="edge",
        metadata={
            "help": "edge: each training interaction once per epoch | user: users equally often, "
            "a random positive each (the LightGCN/DCCF reference protocol)",
            "choices": BPRSampler.MODES,
        },
    )
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate", "above": 0})
    # BPR unless the model's data_defaults say otherwise: the embedding models derive the sampled
    # softmax on dense logs (recsys.models.base.SOFTMAX_FROM_DENSITY).
    loss: str = field(
        default=RankingLoss.kind,
        metadata={
            "help": "ranking loss of the embedding models: softmax (sampled softmax over "
            "loss_negatives shared uniform negatives) | bpr (the papers' one negative a row) "
            f"[softmax from {SOFTMAX_FROM_DENSITY:g} training interactions per user, bpr below]",
            "choices": ("softmax", "bpr"),
        },
    )
    loss_negatives: int = field(
        default=RankingLoss.negatives,
        metadata={"help": "softmax: negatives M shared by the batch's rows", "min": 1},
    )
    loss_temperature: float = field(
        default=RankingLoss.temperature,
        metadata={"help": "softmax: temperature τ on the raw inner products", "above": 0},
    )
    max_steps: int = field(
        default=100,
        metadata={
            "help": "graph models: at most this many steps (full-graph propagations) per epoch; "
            "a larger log gets larger batches, the learning rate scaled by their square root, "
            "so an epoch costs time linear in the log (0: batch_size as given)",
            "min": 0,
        },
    )
    eval_every: int = field(default=1, metadata={"help": "validate every N epochs", "min": 1})
    valid_users: int = field(
        default=16384,
        metadata={
            "help": "users validated after each epoch: at most this many, drawn once from the "
            "seed (0: all); the best epoch is validated on all of them at the end",
            "min": 0,
        },
    )
    patience: int = field(
        default=10,
        metadata={
            "help": "stop once the best validation is this many epochs old (0: never stop early)",
            "min": 0,
        },
    )
    min_epochs: int = field(
        default=30,
        metadata={
            "help": "never stop early before this epoch (outlasts the warm-up dip of validation)",
            "min": 0,
        },
    )
    metric: str = field(
        default="recall@20", metadata={"help": "validation metric for early stopping"}
    )
    eval_k: list[int] = field(
        default_factory=lambda: [10, 20, 40], metadata={"help": "cut-offs K for evaluation"}
    )
    device: str = field(
        default="auto", metadata={"help": "auto | cpu | cuda", "choices": ("auto", "cpu", "cuda")}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed for initialisation, sampling and dropout",
            "min": 0,
            "max": 2**32 - 1,
        },
    )
    max_minutes: float = field(
        default=0.0, metadata={"help": "stop training after this wall time (0: no limit)", "min": 0}
    )


@dataclass
class RunConfig:
    model: str
    train: TrainParams
    params: Any

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "train": dataclasses.asdict(self.train),
            "params": dataclasses.asdict(self.params),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return resolve_config(d["model"], ("config.json", {**d["train"], **d["params"]}))


def option_table(model: str) -> dict[str, tuple[str, dataclasses.Field]]:
    """Every key (and alias) accepted for `model` -> (section, field)."""
    table: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in (("train", TrainParams), ("params", model_class(model).Params)):
        for f in fields(cls):
            for key in (f.name, *f.metadata.get("aliases", ())):
                table[key.replace("-", "_")] = (section, f)
    return table


def _coerce(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("list"):
            items = value if isinstance(value, list) else str(value).split(",")
            numbers = [int(x) for x in items]
            if not numbers or min(numbers) < 1:
                raise ValueError
            return numbers
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: option {key!r} expects {kind}, got {value!r}") from None


def _check_bounds(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    """Field metadata bounds an option: "min"/"max" (inclusive), "above"/"below" (exclusive),
    "choices" (a tuple of allowed strings)."""
    meta = f.metadata
    checks = (("min", lambda b: value >= b, "≥"), ("max", lambda b: value <= b, "≤"),
              ("above", lambda b: value > b, ">"), ("below", lambda b: value < b, "<"))  # fmt: skip
    for name, ok, sign in checks:
        if meta.get(name) is not None and not ok(meta[name]):
            raise ConfigError(
                f"{source}: option {key!r} must be {sign} {meta[name]}, got {value!r}"
            )
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{source}: option {key!r} must be one of {', '.join(meta['choices'])}, got {value!r}"
        )
    return value


def resolve_config(model: str, *layers: tuple[str, dict[str, Any]]) -> RunConfig:
    """Merge (source name, options) layers, lowest precedence first, into a RunConfig."""
    cls = model_class(model)
    table = option_table(model)
    values: dict[str, dict[str, Any]] = {"train": {}, "params": {}}
    for source, layer in (("model defaults", cls.train_defaults), *layers):
        for key, value in layer.items():
            norm = key.replace("-", "_")
            if norm not in table:
                valid = ", ".join(sorted(table))
                raise ConfigError(
                    f"{source}: unknown option {key!r} for model {model!r} (valid: {valid})"
                )
            section, f = table[norm]
            values[section][f.name] = _check_bounds(_coerce(value, f, key, source), f, key, source)
    return RunConfig(model, TrainParams(**values["train"]), cls.Params(**values["params"]))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A flat {key: value} table from TOML or JSON; a `[train]`/`[params]` split is flattened."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = (
            json.loads(path.read_text())
            if path.suffix == ".json"
            else tomllib.loads(path.read_text())
        )
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({e})"
        ) from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def steps_for_log(opts: TrainParams, n_train: int, propagates: bool) -> tuple[int, float]:
    """(batch size, learning rate) for a log of `n_train` training interactions.

    A graph model propagates the whole graph at every step, so an epoch of n/b steps costs
    O(n²/b). Capping the steps at `max_steps` makes it O(n): the batch grows with the log, and
    the learning rate with the square root of the batch's growth (the usual rule for Adam),
    regularisers being batch means already. Logs small enough for `batch_size` to need no more
    than `max_steps` steps (ml-100k, yelp-sslrec, the sample) train exactly as configured.
    Linear scaling is too much: LightGCN on gowalla (batch 2048 → 7,297) with the lr doubled,
    about the linear rule's, peaked at valid Recall@20 0.1645 (epoch 31) and stopped early,
    test 0.1475; the square-root rule was at 0.1711 after 45 epochs and still rising, test 0.1587
    (15 minutes each, one thread, side by side).
    """
    if not propagates or not opts.max_steps or n_train <= opts.max_steps * opts.batch_size:
        return opts.batch_size, opts.lr
    batch = -(-n_train // opts.max_steps)
    return batch, opts.lr * math.sqrt(batch / opts.batch_size)
