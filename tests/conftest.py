import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A tiny grid that runs in a few seconds: random-weight demo CNN (recorded as such in each row).
TINY = """
name: tiny
models:
  - name: demo_cnn
    weights: random
    args: {width: 4}
    compressions: [dense, {method: magnitude, sparsity: 0.5}]
methods: [rlm, flm, ilm]
datasets: [{name: digits}]
shots: [1, 2]
seeds: [1, 2]
train: {epochs: 2, batch_size: 8, input_size: 8}
pack_size: 4
"""


def write_grid(dir: Path, text: str = TINY, name: str = "grid.yaml") -> Path:
    p = dir / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def tiny_grid(tmp_path: Path) -> Path:
    return write_grid(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many small ops: on 2 shared cores one torch thread was several times faster than two
    contending ones (measured: test_vit 18 s against 44-140 s). Restored for the other files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
