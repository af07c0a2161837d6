"""Model registry: name -> class. Modules are imported on first use, so a model is one file."""

from __future__ import annotations

import importlib

from recsys.errors import ConfigError
from recsys.models.base import Batch, Recommender, Search

MODELS = {
    "mostpop": "recsys.models.baselines:MostPop",
    "als": "recsys.models.baselines:ALS",
    "bpr": "recsys.models.baselines:ImplicitBPR",
    "mf": "recsys.models.mf:MF",
    "lightgcn": "recsys.models.lightgcn:LightGCN",
    "lightgcl": "recsys.models.lightgcl:LightGCL",
    "dccf": "recsys.models.dccf:DCCF",
}


def model_class(name: str) -> type[Recommender]:
    """The Recommender class registered as `name`."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (choose from: {', '.join(available_models())})")
    module, attr = MODELS[name].split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model {name!r} is not available in this installation ({e})") from e


def available_models() -> list[str]:
    names = []
    for name, target in MODELS.items():
        module, attr = target.split(":")
        try:
            if hasattr(importlib.import_module(module), attr):
                names.append(name)
        except ImportError:
            continue
    return names


__all__ = ["Batch", "MODELS", "Recommender", "Search", "available_models", "model_class"]
