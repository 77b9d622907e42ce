"""Label mapping cards: one per registered label mapping (workers/mapping.py computes it). The VP methods are
named after their label mapping (workers/core/schemas/methods.py)."""
from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("fixed", "once", "every_epoch")


@dataclass(frozen=True)
class MappingCard:
    """When a label mapping is computed: "fixed" (from the seed, no data), "once" (with the initial prompt before
    training), "every_epoch" (at the start of every epoch with the current prompt). Its builder
    (workers/mapping.py) computes it."""

    schedule: str

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")


MAPPINGS = {"rlm": MappingCard("fixed"), "flm": MappingCard("once"), "ilm": MappingCard("every_epoch"),
            "ilm_hungarian": MappingCard("every_epoch")}
