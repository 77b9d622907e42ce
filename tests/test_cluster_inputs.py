"""Bad cluster and store inputs: each ends in one clear line and a non-zero exit, with nothing half-written.

Every case here fails before a Ray cluster is needed, except the local start that fails (Ray's own start is
replaced by one that fails the way an agent dying at start-up does)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from workers.core.store import Store
from tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.unit

cli = CliRunner()


def one_line_error(r, exit_code: int = 1) -> str:
    assert r.exit_code == exit_code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    return lines[0]


def test_ray_client_addresses_are_refused_with_what_to_use_instead(tiny_grid, tmp_path):
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", str(tmp_path / "s"),
                                           "--address", "ray://head:10001"]))
    assert "Ray Client (ray://)" in line and "vpgrid submit" in line and "--address auto" in line
    assert not (tmp_path / "s").exists()


def test_an_address_nobody_answers_at(tiny_grid, tmp_path, monkeypatch):
    """Refused by one connection attempt, never handed to ray.init (which would retry for minutes)."""
    import ray

    def no_init(*a, **kw):
        raise AssertionError("ray.init was called for an address nobody answers at")

    monkeypatch.setattr(ray, "init", no_init)
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", str(tmp_path / "s"),
                                           "--address", f"127.0.0.1:{free_port()}"]))
    assert "no Ray head answers there" in line
    assert not (tmp_path / "s").exists()


def test_submit_to_a_jobs_server_nobody_answers_at(tiny_grid):
    line = one_line_error(cli.invoke(app, ["submit", str(tiny_grid), "--address", f"http://127.0.0.1:{free_port()}",
                                           "--store", "s3://bucket/x"]))
    assert "could not submit to the Ray Jobs server" in line


def test_submit_needs_a_store_the_cluster_can_see(tiny_grid):
    line = one_line_error(cli.invoke(app, ["submit", str(tiny_grid), "--address", "http://127.0.0.1:1",
                                           "--store", "results/x"]))
    assert "s3:// or gs:// URI or an absolute path" in line


@pytest.mark.parametrize("cmd", [["status"], ["resume"], ["report"], ["compact"]])
def test_a_typo_in_the_scheme(cmd):
    line = one_line_error(cli.invoke(app, cmd + ["s4://bucket/x"]))
    assert "unknown scheme 's4://'" in line and "s3://" in line


@pytest.mark.cluster
def test_a_bucket_that_does_not_exist(tiny_grid, s3_server):
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", "s3://no-such-bucket/x"]))
    assert "bucket 'no-such-bucket' does not exist" in line
    line = one_line_error(cli.invoke(app, ["status", "s3://no-such-bucket/x"]))
    assert "bucket 'no-such-bucket' does not exist" in line and "not a vpgrid store" not in line


def test_a_relative_file_uri_is_refused_like_a_relative_path(tiny_grid, tmp_path, monkeypatch):
    """file://results/small would silently become this machine's ./results/small (and not the cluster's)."""
    monkeypatch.chdir(tmp_path)
    line = one_line_error(cli.invoke(app, ["submit", str(tiny_grid), "--address", "http://127.0.0.1:1",
                                           "--store", "file://results/small"]))
    assert "--store file://results/small" in line and "s3:// or gs:// URI or an absolute path" in line
    for cmd in (["launch", str(tiny_grid), "--store", "file://results/small"], ["status", "file://results/small"]):
        line = one_line_error(cli.invoke(app, cmd))
        assert "file://results/small: a file:// URI needs an absolute path (file:///abs/path)" in line
    assert not (tmp_path / "results").exists()
    st = Store(f"file://{tmp_path}/abs")  # an absolute file:// URI is the same store as the plain path
    assert st.root == str(tmp_path / "abs")


def _hand_put(st: Store, name: str, obj: dict) -> None:
    """A file of the store's _vpgrid folder, written as another host would have left it."""
    (Path(st.meta_dir) / name).parent.mkdir(parents=True, exist_ok=True)
    (Path(st.meta_dir) / name).write_text(json.dumps(obj))


def test_status_counts_only_trials_whose_heartbeat_is_fresh(tiny_grid, tmp_path):
    """A trial whose node died leaves its heartbeat file behind; it is not running."""
    st = Store(tmp_path / "s")
    st.create(tiny_grid.read_text())
    now = time.time()
    st.write_launch({"launch_id": "x", "host": "elsewhere", "pid": 1, "started": now - 900, "heartbeat": now})
    st.heartbeat("t0001", {"runs_total": 4, "runs_done": 1, "current": None})
    _hand_put(st, "running/t0002.json", {"trial": "t0002", "runs_total": 4, "runs_done": 2, "updated": now - 600})
    out = json.loads(cli.invoke(app, ["status", str(tmp_path / "s"), "--json"]).stdout)
    assert out["driver_alive"] is True and [h["trial"] for h in out["running"]] == ["t0001"]
    r = cli.invoke(app, ["status", str(tmp_path / "s")])
    assert "launch running: 1 trials active" in r.stdout and "t0002" not in r.stdout


def test_a_running_trial_rewrites_its_heartbeat_until_stopped(tmp_path):
    st = Store(tmp_path / "s")
    st.create("name: x\n")
    progress = {"runs_total": 3, "runs_done": 0}
    st.heartbeat("t0001", progress)
    first = st.heartbeats()[0]["updated"]
    beat = st.keep_beating("t0001", progress, every=0.05)
    progress["runs_done"] = 2  # the beat carries the progress as it is when it beats
    t0 = time.time()
    while (h := st.heartbeats()[0])["updated"] == first or h["runs_done"] != 2:
        assert time.time() - t0 < 30, h
        time.sleep(0.01)
    beat.stop()
    st.end_heartbeat("t0001")
    assert not beat.is_alive() and st.heartbeats() == []  # no beat lands after stop()


def test_status_of_a_store_whose_submitted_job_has_no_driver_yet(tiny_grid, tmp_path):
    """`submit` wrote the grid and its job's record; the driver has not written its first heartbeat."""
    st = Store(tmp_path / "s")
    st.create(tiny_grid.read_text())
    nobody = f"http://127.0.0.1:{free_port()}"
    st.write_submitted({"job_id": "vpgrid-tiny-1", "address": nobody, "submitted": time.time()})
    r = cli.invoke(app, ["status", str(tmp_path / "s")])
    assert r.exit_code == 0 and "submitted as job vpgrid-tiny-1, waiting for its driver" in r.stdout
    assert f"its Jobs server {nobody} cannot be asked from here" in r.stdout and "no launch running" not in r.stdout
    # the driver's first heartbeat names its job: from then on the store says it all
    st.write_launch({"launch_id": "a", "host": "elsewhere", "pid": 1, "started": time.time(),
                     "heartbeat": time.time(), "job_id": "vpgrid-tiny-1"})
    out = json.loads(cli.invoke(app, ["status", str(tmp_path / "s"), "--json"]).stdout)
    assert out["driver_alive"] is True and out["job"] is None
    # an earlier launch (another job, or none) is not this job's driver; a later one has taken the store over
    submitted = st.submitted_info()["submitted"]
    for started, job in ((submitted - 900, "waiting"), (submitted + 900, None)):
        st.write_launch({"launch_id": "a", "host": "elsewhere", "pid": 1, "started": started,
                         "heartbeat": started + 60, "finished": started + 60})
        out = json.loads(cli.invoke(app, ["status", str(tmp_path / "s"), "--json"]).stdout)
        assert (out["job"] or {}).get("state") == job


def test_status_of_a_store_whose_submitted_job_failed(tiny_grid, tmp_path):
    st = Store(tmp_path / "s")
    st.create(tiny_grid.read_text())
    st.write_submitted({"job_id": "vpgrid-tiny-2", "address": "http://head:8265", "submitted": time.time(),
                        "failed": time.time(), "state": "FAILED",
                        "error": "ModuleNotFoundError: No module named 'typer'"})
    r = cli.invoke(app, ["status", str(tmp_path / "s")])
    assert r.exit_code == 0
    assert ("submitted as job vpgrid-tiny-2, which failed before its driver ran: ModuleNotFoundError: No module "
            "named 'typer'; its log: ray job logs --address http://head:8265 vpgrid-tiny-2") in r.stdout
    assert "not a vpgrid store" not in r.output


def _fake_python(path: Path, out: Path) -> Path:
    """An executable that records how it was called, standing in for an interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$0 $*" > {out}\n')
    path.chmod(0o755)
    return path


@pytest.mark.integration
def test_the_job_driver_runs_the_interpreter_ray_runs_whatever_the_path(tmp_path):
    """A Ray Job's entrypoint runs under the job's supervisor, a Ray worker whose parent, the raylet, names the
    interpreter Ray runs (--python_worker_command=PYTHON ...). The PATH's python3 is another one."""
    from orchestrator.submit import DRIVER_SCRIPT

    out = tmp_path / "called"
    ray_python = _fake_python(tmp_path / "venv" / "bin" / "python", out)
    _fake_python(tmp_path / "bin" / "python3", out)  # the head's PATH: not the interpreter Ray runs
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    raylet = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:]))",
              f"--python_worker_command={ray_python} /ray/_private/workers/setup_worker.py --flag"]
    # as Ray runs it: the supervisor's `/bin/sh -c ENTRYPOINT`, below the raylet
    job = ["/bin/sh", "-c", f"/bin/sh {DRIVER_SCRIPT} launch grid.yaml --store 's3://b/x y'"]
    assert subprocess.run(raylet + job, env=env, timeout=60).returncode == 0
    assert out.read_text().strip() == f"{ray_python} -m orchestrator.cli launch grid.yaml --store s3://b/x y"
    # not under Ray: the PATH's python3
    assert subprocess.run(job, env=env, timeout=60).returncode == 0
    assert out.read_text().strip() == f"{tmp_path / 'bin' / 'python3'} -m orchestrator.cli launch grid.yaml --store s3://b/x y"


@pytest.fixture(scope="module")
def s3_with_auth():
    """A second S3 server that checks credentials (moto's IAM mode): only keys it issued are accepted."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.cluster
def test_wrong_credentials(tiny_grid, s3_with_auth, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_with_auth)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for cmd in (["launch", str(tiny_grid), "--store", "s3://bucket/x"], ["status", "s3://bucket/x"]):
        line = one_line_error(cli.invoke(app, cmd))
        assert "s3://bucket/x" in line and ("ACCESS_DENIED" in line or "InvalidAccessKeyId" in line
                                            or "credentials" in line), line


def test_a_local_ray_that_fails_to_start_ends_in_one_line(tiny_grid, tmp_path, monkeypatch):
    import ray

    calls = []

    def failing_init(*a, **kw):
        calls.append(kw.get("address"))
        raise RuntimeError("Failed to start the dashboard agent: the agent process exited\nmore detail")

    monkeypatch.setattr(ray, "init", failing_init)
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", str(tmp_path / "s")]))
    assert calls == ["local", "local"]  # tried twice: it is often transient
    assert line == ("error: could not start or reach a local Ray cluster: Failed to start the dashboard agent: "
                    "the agent process exited; run the command again")
    assert Store(tmp_path / "s").statuses() == {}  # the store holds its grid and no row: resume starts it


def test_status_of_a_launch_whose_driver_died_on_another_host(tiny_grid, tmp_path):
    """Only the store is seen from here: a stale heartbeat means the launch is not running, whatever the pid."""
    st = Store(tmp_path / "s")
    st.create(tiny_grid.read_text())
    info = {"launch_id": "x", "host": "elsewhere", "pid": 1, "started": time.time() - 900}
    st.write_launch({**info, "heartbeat": time.time() - 600})
    r = cli.invoke(app, ["status", str(tmp_path / "s"), "--watch", "--interval", "0.1"])  # returns: no launch to watch
    assert r.exit_code == 0
    assert "no launch running; finish with: vpgrid resume" in r.stdout
    st.write_launch({**info, "heartbeat": time.time()})
    out = json.loads(cli.invoke(app, ["status", str(tmp_path / "s"), "--json"]).stdout)
    assert out["driver_alive"] is True
    st.write_launch({**info, "heartbeat": time.time(), "finished": time.time()})
    assert json.loads(cli.invoke(app, ["status", str(tmp_path / "s"), "--json"]).stdout)["driver_alive"] is False


def test_rays_raylet_messages_reach_the_driver_as_one_line_once_on_stderr(capsys, monkeypatch):
    """Ray's driver prints every error a raylet publishes (a node's death: a long state dump, often twice) on
    stdout, whatever log_to_driver says. A launch keeps the first line of each, once, on stderr."""
    import ray._private.worker as ray_worker

    from orchestrator.ray_tune import _shorten_raylet_errors

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # undone after the test
    _shorten_raylet_errors()
    dump = "The node with node id: 1f2e has been marked dead.\n\tRayTask ID: ...\n\tWorker exit detail: ..."
    for _ in range(2):
        ray_worker.print_to_stdstream({"lines": [dump], "pid": "raylet", "is_err": False}, False)
    out, err = capsys.readouterr()
    assert out == "" and err.count("has been marked dead") == 1 and "Worker exit detail" not in err
