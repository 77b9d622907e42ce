"""Every registry in one place: the builders the workers run, by kind. The control plane checks a grid against the
cards (workers/core/schemas, torch-free: orchestrator.validate); a card without a builder here, or a builder
without a card, fails tests/test_schemas.py."""
from __future__ import annotations

from workers.compression import COMPRESSIONS
from workers.data import DATASETS
from workers.methods import METHODS
from workers.models import MODELS

REGISTRIES = {"model": MODELS, "compression": COMPRESSIONS, "dataset": DATASETS, "method": METHODS}
