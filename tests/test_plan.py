from collections import Counter

import yaml

from orchestrator.grid import expand, parse_grid
from orchestrator.plan import breakdown, pack
from tests.conftest import TINY


def test_packs_group_variant_and_dataset_and_cover_every_run_once():
    d = yaml.safe_load(TINY)
    d["pack_size"] = 5
    d["models"][0]["resources"] = {"cpu": 0.5, "gpu": 0.25}
    grid = parse_grid(yaml.safe_dump(d))
    runs = expand(grid)
    trials = pack(grid, runs)
    keys = [r.run_key for t in trials for r in t.runs]
    assert sorted(keys) == sorted(r.run_key for r in runs)  # each run in exactly one trial
    for t in trials:
        assert len(t.runs) <= 5
        assert len({(r.variant_key, r.dataset) for r in t.runs}) == 1
        assert (t.cpu, t.gpu) == (0.5, 0.25)
    # 12 runs per variant, pack size 5 -> 3 packs of 4 per variant (round-robin keeps them even)
    assert sorted(len(t.runs) for t in trials) == [4] * 6
    assert len({t.trial_id for t in trials}) == len(trials)
    assert [t.trial_id for t in pack(grid, runs)] == [t.trial_id for t in trials]  # deterministic


def test_breakdown_counts():
    runs = expand(parse_grid(TINY))
    b = breakdown(runs)
    assert b["method"] == {"rlm": 8, "flm": 8, "ilm": 8}
    assert b["compression"] == {"dense": 12, "magnitude@0.5": 12}
    assert b["shots"] == {"1": 12, "2": 12}
    assert sum(b["seed"].values()) == len(runs) == sum(Counter(r.dataset for r in runs).values())
