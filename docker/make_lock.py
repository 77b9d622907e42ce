"""Print docker/requirements.lock: vpgrid's runtime dependencies, transitively, at the versions installed here.

torch and torchvision (and what only they pull in: nvidia-*, triton, ...) are left out: the Dockerfile
pins them to builds for its base image's CUDA. Run from the repository root in the tested environment:
    python docker/make_lock.py > docker/requirements.lock
"""
from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

CUDA_PINNED = {"torch", "torchvision"}  # pinned by the Dockerfile, with the CUDA build tag


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[Requirement]) -> dict[str, str]:
    """name -> installed version for every package the roots need here (markers and extras applied)."""
    pins: dict[str, str] = {}
    extras_done: dict[str, set[str]] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if name in CUDA_PINNED or (name in pins and set(req.extras) <= extras_done[name]):
            continue
        dist = md.distribution(req.name)  # fails loudly if a dependency is not installed
        pins[name] = dist.version
        extras_done[name] = extras_done.get(name, set()) | set(req.extras)
        envs = [{"extra": e} for e in extras_done[name]] + [{"extra": ""}]
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return pins


def main() -> None:
    deps = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    pins = closure([Requirement(d) for d in deps])
    print("# vpgrid's runtime dependencies as tested; regenerate: python docker/make_lock.py > docker/requirements.lock")
    print("# torch/torchvision are pinned in docker/Dockerfile (CUDA builds).")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
