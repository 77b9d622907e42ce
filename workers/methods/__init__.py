"""Transfer methods, one file per family: visual prompting with its label mappings (vp), CLIP prompting,
cross-modal reprogramming, and the classic baselines LP and FF. All train on the one epoch loop of
`workers.train`. Importing the method modules here is what registers them.
"""
from workers.methods.base import BATCHED, METHODS
from workers.methods import vp, baselines, clip_prompting, crossmodal  # noqa: F401  (registration side effects)

__all__ = ["BATCHED", "METHODS"]
