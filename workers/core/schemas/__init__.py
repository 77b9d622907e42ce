"""One card per registered name, by kind, importable without torch: its help, its argument schema and its
metadata (sizes, passes, layout, resources, ...).

The registries (workers.models.MODELS, ...) are built against these tables: a decorator only attaches the
builder, and a registry refuses a name that has no card here. `vpgrid plan`, `validate` and `list` read the cards
without importing the workers.
"""
from workers.core.schemas.compressions import COMPRESSIONS
from workers.core.schemas.datasets import DATASETS
from workers.core.schemas.mappings import MAPPINGS
from workers.core.schemas.methods import METHODS
from workers.core.schemas.models import MODELS

CARDS = {"model": MODELS, "compression": COMPRESSIONS, "method": METHODS, "dataset": DATASETS}  # the grid's kinds

__all__ = ["CARDS", "MODELS", "COMPRESSIONS", "METHODS", "DATASETS", "MAPPINGS"]
