"""Bad cluster and store inputs: each ends in one clear line and a non-zero exit, with nothing half-written.

Every case here fails before a Ray cluster is needed, except the local start that fails (Ray's own start is
replaced by one that fails the way an agent dying at start-up does)."""
import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.store import Store
from tests.conftest import free_port, wait_for_port

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


def test_a_bucket_that_does_not_exist(tiny_grid, s3_server):
    line = one_line_error(cli.invoke(app, ["launch", str(tiny_grid), "--store", "s3://no-such-bucket/x"]))
    assert "bucket 'no-such-bucket' does not exist" in line
    line = one_line_error(cli.invoke(app, ["status", "s3://no-such-bucket/x"]))
    assert "no-such-bucket" in line


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
