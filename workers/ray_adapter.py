"""The one place where the data plane meets Ray: a Tune function trainable that runs a pack of runs.

Each finished run is published to the store by the worker itself (workers/trial.py), so a run is recorded the
moment it ends, whatever happens to the driver afterwards.
"""
from __future__ import annotations

from typing import Optional

import ray
from ray import tune

from workers.trial import run_trial


def trainable(config: dict, packs: Optional[dict] = None) -> None:
    """One trial: `config["pack"]` and its runs (see `run_trial`), on the node Ray put it on."""
    run_trial(config["pack"], ray.get_runtime_context().get_node_id(), tune.report, packs)
