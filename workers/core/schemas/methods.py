"""Transfer methods (the grid's `methods`). None takes arguments yet; the training recipe is `train`."""
from workers.core.schema import Schema

METHODS = {
    "rlm": Schema("pad prompt, random label mapping fixed by the seed"),
    "flm": Schema("pad prompt, frequency label mapping computed once"),
    "ilm": Schema("pad prompt, frequency label mapping recomputed every epoch"),
    "ilm_hungarian": Schema("pad prompt, optimal label mapping recomputed every epoch"),
    "lp": Schema("linear probe: a new linear head on frozen features"),
    "ff": Schema("full fine-tuning: every weight and a new head, pruned zeros kept"),
    "clip_vp": Schema("CLIP: additive pad prompt, one text per class (Bahng et al.)"),
    "clip_ilm": Schema("CLIP: additive pad prompt, ILM over 81 templates x K"),
    "reprogram": Schema("cross-modal reprogramming: token embedding -> 16px patches, 10 source classes per class"),
}
