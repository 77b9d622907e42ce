"""Peak memory of the actors that decode and read a dataset cache (docs/benchmarks.md, "Memory"): EuroSAT at 336 px with
CLIP's crop, on a synthetic EuroSAT of the real size (27,000 64x64 JPEGs in torchvision's layout).

    python scripts/measure_rss.py WORKDIR [--scale 1.0]

Each phase runs in a fresh interpreter so its peak is its own; prints one JSON line per phase."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COUNTS = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500, "Industrial": 2500,
          "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000, "River": 2500, "SeaLake": 3000}


def make_eurosat(root: Path, scale: float) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in COUNTS.items():
        d = root / "eurosat" / "2750" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(int(n * scale)):
            f = d / f"{c}_{i + 1}.jpg"
            if not f.exists():
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(f, quality=90)


PHASE = r'''
import json, sys, time, torch
from pathlib import Path
from workers.data import Crop, cached_dataset
from workers.data.fewshot import few_shot_indices
root, cache, phase = sys.argv[1:4]
torch.set_num_threads(1)
t0 = time.time()
d = cached_dataset("eurosat", 336, root, {"download": False, "test_fraction": 0.2}, Path(cache),
                   crop=Crop("bicubic", 1.0))
if phase == "read":
    idx = few_shot_indices(d.train_y, 16, 1)
    shots = d.train_x[idx].float().div(255)
    total = 0.0
    for i in range(0, len(d.test_x), 256):
        total += float(d.test_x[i:i + 256].float().div_(255).mean())
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
kb = lambda k: int(status[k].split()[0]) / 2**20
print(json.dumps({"phase": phase, "images": len(d.train_y) + len(d.test_y), "peak_rss_gb": round(kb("VmHWM"), 2),
                  "rss_anon_gb": round(kb("RssAnon"), 2), "rss_file_gb": round(kb("RssFile"), 2),
                  "seconds": round(time.time() - t0, 1)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    root, cache = a.workdir / "data", a.workdir / "cache"
    make_eurosat(root, a.scale)
    for phase in ("decode", "read", "read"):  # the second reader finds the file's pages already cached
        subprocess.run([sys.executable, "-c", PHASE, str(root), str(cache), phase], check=True)
    files = list((cache / "datasets").glob("eurosat-*.pt"))
    print(json.dumps({"cache_file_gb": round(sum(f.stat().st_size for f in files) / 2**30, 2)}))


if __name__ == "__main__":
    main()
