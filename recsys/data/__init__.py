"""The data layer: read logs, map ids, filter, split, and hold the result as a `Dataset`."""

from recsys.data.dataset import Dataset
from recsys.data.idmap import IdMap
from recsys.data.io import read_log
from recsys.data.prepare import describe, prepare_dataset
from recsys.data.synth import powerlaw_chunks, powerlaw_log, synth_log

__all__ = [
    "Dataset",
    "IdMap",
    "read_log",
    "prepare_dataset",
    "describe",
    "synth_log",
    "powerlaw_log",
    "powerlaw_chunks",
]
