"""Every registered name's help and argument schema, by kind, importable without torch.

The registries (workers.models.MODELS, ...) are built against these tables and refuse a name that has no
entry here; `vpgrid plan` and `vpgrid list` read them without importing the workers.
"""
from workers.core.schemas.compressions import COMPRESSIONS
from workers.core.schemas.datasets import DATASETS
from workers.core.schemas.methods import METHODS
from workers.core.schemas.models import MODELS

SCHEMAS = {"model": MODELS, "compression": COMPRESSIONS, "method": METHODS, "dataset": DATASETS}

__all__ = ["SCHEMAS", "MODELS", "COMPRESSIONS", "METHODS", "DATASETS"]
