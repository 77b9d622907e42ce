"""What a launch says and its exit code, from what the store holds at its end: every trial run in this process
(tests/inprocess.py) through the function the Ray trainable calls, real runs of a tiny grid, no Ray. The same
behaviours on a real Ray, once each: test_launch.py and test_cluster.py."""
import functools

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.grid import expand, parse_grid
from workers.core.errors import ClusterGone
from workers.core.store import Store
from tests.conftest import TINY, write_grid
from tests.inprocess import InProcess

pytestmark = pytest.mark.unit
cli = CliRunner()


@pytest.fixture
def in_process(monkeypatch) -> InProcess:
    """The CLI's launches run their trials in this process."""
    import orchestrator.launch as launch_module

    executor = InProcess()
    monkeypatch.setattr(launch_module, "launch", functools.partial(launch_module.launch, executor=executor))
    return executor


def small(tmp_path, **changes):
    d = yaml.safe_load(TINY)
    d.update(methods=["rlm"], seeds=[1], **changes)  # 2 compressions x 2 shots: 4 runs in 2 trials
    return write_grid(tmp_path, yaml.safe_dump(d))


def run(*args) -> tuple[int, str]:
    r = cli.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stderr


def test_a_clean_launch_exits_0_compacted_with_its_heartbeats_gone(tmp_path, in_process):
    g = small(tmp_path)
    code, err = run("launch", g, "--store", tmp_path / "s", "-q")
    assert code == 0 and "4 ok, 0 failed of 4 runs launched (0 already done)" in err, err
    st = Store(tmp_path / "s")
    assert sorted(st.statuses()) == sorted(r.run_key for r in expand(parse_grid(g.read_text())))
    (merged,) = (tmp_path / "s" / "runs").iterdir()  # compacted
    assert merged.name.startswith("part-") and st.heartbeats() == []
    assert "finished" in st.launch_info() and "ended" not in st.launch_info()
    assert sorted(m["run_key"] for m in in_process.reports) == sorted(st.statuses())  # each run reported once
    (job,) = in_process.asked
    assert sum(c["runs"] for c in job.configs) == 4 and job.max_failures == parse_grid(g.read_text()).max_failures
    code, err = run("launch", g, "--store", tmp_path / "s", "-q")
    assert code == 0 and "nothing to run: all 4 runs of tiny are in the store" in err and len(in_process.asked) == 1


def test_failed_runs_exit_3_and_retry_failed_reruns_only_them(tmp_path, in_process):
    """Digits has under 500 images a class, so the 500-shot runs fail (no cap_shots), every time."""
    g = small(tmp_path, shots=[1, 500])
    store = tmp_path / "s"

    def finished() -> dict:
        rows = Store(store).table().to_pylist()
        return {(x["run_key"], x["status"]): x["finished_at"] for x in rows}

    code, err = run("launch", g, "--store", store, "-q")
    assert code == 3 and "2 ok, 2 failed of 4 runs launched" in err and f"vpgrid status {store} --failed" in err
    first = finished()
    code, err = run("resume", store, "-q")  # failed rows count as done unless asked
    assert code == 0 and "nothing to run" in err and finished() == first
    for args in (["resume", store, "-q", "--retry-failed"], ["launch", g, "--store", store, "-q", "--retry-failed"]):
        code, err = run(*args)
        assert code == 3 and "0 ok, 2 failed of 2 runs launched (2 already done)" in err, err
        now = finished()
        assert {k: t for k, t in now.items() if k[1] == "ok"} == {k: t for k, t in first.items() if k[1] == "ok"}
        assert all(now[k] > t for k, t in first.items() if k[1] == "failed")  # ran again
        first = now


def test_a_trial_out_of_retries_leaves_its_runs_pending_exit_4_and_resume_finishes_them(tmp_path, in_process):
    g = small(tmp_path)
    store = tmp_path / "s"
    in_process.lose = {0: 1}  # the first trial publishes one of its two runs, then its worker dies
    code, err = run("launch", g, "--store", store, "-q")
    lost = in_process.asked[0].configs[0]["trial_id"]
    assert code == 4 and "3 ok, 0 failed of 4 runs launched (0 already done)" in err and "1 trials errored" in err, err
    assert f"trial error: trial {lost}: its worker died" in err
    assert f"1 runs are still pending (their trials ran out of retries); finish with: vpgrid resume {store}" in err
    st = Store(store)
    before = {x["run_key"]: x["finished_at"] for x in st.table().to_pylist()}
    assert [hb["trial"] for hb in st.heartbeats()] == [lost]  # the lost trial's heartbeat stays, naming its node
    in_process.lose = {}
    code, err = run("resume", store, "-q")
    assert code == 0 and "1 ok, 0 failed of 1 runs launched (3 already done)" in err, err
    after = {x["run_key"]: x["finished_at"] for x in st.table().to_pylist()}
    assert len(after) == 4 and all(after[k] == t for k, t in before.items())  # only the pending run ran


def test_ctrl_c_leaves_the_rest_pending_exit_4(tmp_path, in_process):
    g = small(tmp_path)
    in_process.interrupt_after = 1  # Tune stops gracefully after the first trial
    code, err = run("launch", g, "--store", tmp_path / "s", "-q")
    assert code == 4, err
    assert err.strip().splitlines()[-1] == (f"interrupted (Ctrl-C): 2 runs are still pending; finish with: "
                                            f"vpgrid resume {tmp_path / 's'}")
    assert "ran out of retries" not in err and Store(tmp_path / "s").launch_info()["ended"] == "interrupted"
    assert len(Store(tmp_path / "s").statuses()) == 2


@pytest.mark.parametrize("raised, line, ended", [
    (KeyboardInterrupt(), "error: interrupted (Ctrl-C); finished runs are in the store: vpgrid resume {s}",
     "interrupted"),
    (ClusterGone("the Ray cluster is gone (x); finished runs are in the store: vpgrid resume {s}"),
     "error: the Ray cluster is gone (x); finished runs are in the store: vpgrid resume {s}", "the Ray cluster")],
    ids=["second-ctrl-c", "cluster-gone"])
def test_a_launch_stopped_mid_way_says_so_in_one_line_and_exits_4(tmp_path, monkeypatch, raised, line, ended):
    """A second Ctrl-C (or one before Tune took over SIGINT), or the cluster gone: the executor raises."""
    import orchestrator.launch as launch_module

    s = tmp_path / "s"
    if isinstance(raised, ClusterGone):
        raised = ClusterGone(str(raised).format(s=s))

    def stopped(job):
        raise raised

    monkeypatch.setattr(launch_module, "launch", functools.partial(launch_module.launch, executor=stopped))
    code, err = run("launch", small(tmp_path), "--store", s, "-q")
    assert code == 4 and err.strip().splitlines() == [line.format(s=s)], err
    info = Store(s).launch_info()
    assert info["ended"].startswith(ended) and "finished" in info


def test_compaction_is_due_by_time_once_enough_files_wait_and_at_once_when_too_many_do():
    from orchestrator.launch import compaction_due

    bounds = dict(every_s=300, min_files=200, max_files=2000)
    assert not compaction_due(199, 10_000, **bounds)  # too few to be worth a merge, however long ago the last
    assert not compaction_due(200, 300, **bounds)  # enough, but the last merge is recent
    assert compaction_due(200, 301, **bounds)
    assert compaction_due(2000, 0, **bounds)  # so many that every listing is slow: now, whatever the time
    assert not compaction_due(1999, 0, **bounds)


@pytest.mark.integration  # a fresh interpreter: this one has torch loaded
def test_the_launch_driver_imports_no_torch(tmp_path):
    """The control plane checks, packs and hands the trials over without torch (the cards say what the registries
    hold): a launch's driver starts in seconds. The executor here records the trials and runs none."""
    import subprocess
    import sys

    g = write_grid(tmp_path)
    code = ("import sys; from orchestrator.grid import parse_grid; from orchestrator.launch import launch; "
            "from orchestrator.ray_tune import Executed; seen = []; text = open(sys.argv[1]).read(); "
            "launch(parse_grid(text), text, sys.argv[1], sys.argv[2], progress=False, "
            "executor=lambda job: seen.append(len(job.configs)) or Executed([], 0.0, 0.0)); "
            "print(seen, sorted(m for m in ('torch', 'torchvision', 'timm', 'open_clip', 'sklearn') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(g), str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[8] []"
