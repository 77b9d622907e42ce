"""A real multi-node Ray cluster on this machine: a head and two worker nodes (each its own raylet), the store
on a real S3 API server, a grid submitted as a Ray Job, and a worker node SIGKILLed mid-grid.

The nodes inherit this process's environment, so they reach the S3 server as a cloud cluster's nodes would
reach theirs: through AWS_ENDPOINT_URL and credentials of their own.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from orchestrator.grid import expand, parse_grid
from workers.core.store import Store
from tests.conftest import TINY, Gate, free_port, reap, write_grid

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
VPGRID = [sys.executable, "-m", "orchestrator.cli"]
METRICS = ["accuracy", "ece", "conf_correct", "nll", "final_train_loss"]


def grid(**changes) -> str:
    d = yaml.safe_load(TINY)
    d.update(changes)
    return yaml.safe_dump(d)


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    from ray.cluster_utils import Cluster

    # The nodes' workers read the gate from the environment they start with: one gate for the module, open
    # unless a test closes it to hold runs at a kill point.
    gate = Gate(tmp_path_factory.mktemp("gate"))
    gate.open()
    saved = os.environ.get("VPGRID_TEST_GATE")
    os.environ.update(gate.env)
    # Cluster() records its address in Ray's default temp dir without creating it: on a machine where Ray has
    # never run, that folder does not exist yet.
    from ray._private.utils import get_ray_address_file

    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    port = free_port()
    # Each node its own temp dir, as separate machines have: a dying node's clean-up cannot touch the others'
    # runtime environments (short paths: Ray's sockets live there). And its own dashboard agent port: on one
    # machine every node's agent would take 52365, and the head's, which runs jobs, may lose (docs/cluster.md).
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                "dashboard_port": port, "dashboard_agent_listen_port": free_port(),
                                "temp_dir": tempfile.mkdtemp(prefix="rh-", dir="/tmp")})
    try:
        workers = [c.add_node(num_cpus=1, dashboard_agent_listen_port=free_port(),
                              temp_dir=tempfile.mkdtemp(prefix=f"rw{i}-", dir="/tmp")) for i in range(2)]
        c.wait_for_nodes()
        yield SimpleNamespace(cluster=c, workers=workers, jobs=f"http://127.0.0.1:{port}", gcs=c.address, gate=gate)
    finally:
        c.shutdown()
        if saved is None:
            os.environ.pop("VPGRID_TEST_GATE", None)
        else:
            os.environ["VPGRID_TEST_GATE"] = saved


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "VPGRID_CLUSTER_GONE_S": "30"}


def reference(text: str) -> dict:
    """The same runs, one at a time in this process with no Ray at all: what an uninterrupted run gives."""
    import torch

    from workers.run import run_pack

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each trial runs (resources cpu 1)
    try:
        specs = expand(parse_grid(text))
        return {r.run_key: r for r in run_pack(specs, Path(os.environ["VPGRID_CACHE"]))}
    finally:
        torch.set_num_threads(threads)


def one_row_versions(bucket: str, prefix: str) -> Counter:
    """Every version ever PUT of each run's one-row file, compacted away or not (the bucket is versioned)."""
    import boto3

    s3 = boto3.client("s3")
    counts: Counter = Counter()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            m = re.search(r"/([0-9a-f]{16})\.(ok|failed)\.parquet$", v["Key"])
            if m:
                counts[m.group(1)] += 1
    return counts


def wait_job(client, job: str, timeout: float = 420) -> str | None:
    """The job's final status; None if it is still going after `timeout` seconds (0: just look)."""
    t0 = time.time()
    while (status := str(client.get_job_status(job)).split(".")[-1]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.time() - t0 >= timeout:
            return None
        time.sleep(1)
    return status


@pytest.mark.smoke
def test_submit_with_the_store_on_s3_survives_a_worker_node_dying(cluster, s3_bucket, tmp_path):
    import boto3
    from ray.job_submission import JobSubmissionClient

    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    text = grid(pack_size=3, resources={"cpu": 1})
    g = write_grid(tmp_path, text)
    store = f"{s3_bucket}/demo"
    gate = cluster.gate
    gate.close()  # runs publish one token at a time: the kill comes mid-grid on any machine
    r = subprocess.run(VPGRID + ["submit", str(g), "--address", cluster.jobs, "--store", store, "--max-failures", "3"],
                       env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert job.startswith("vpgrid-tiny-") and "vpgrid status" in r.stderr
    # submit wrote the grid and its job's record, and returned once the driver's first heartbeat named the job
    assert re.search(rf"job {job}: (pending|running), waiting for its driver.s first heartbeat", r.stderr), r.stderr
    assert f"job {job}: its driver started" in r.stderr and "Uploading package" not in r.stderr
    assert Store(store).submitted_info()["job_id"] == job and Store(store).launch_info()["job_id"] == job
    client = JobSubmissionClient(cluster.jobs)

    st = Store(store)
    try:
        # Release runs one by one until a few are published from both worker nodes (each holds a trial at the gate).
        while gate.released < 4 or st.frame()["node"].nunique() < 2:
            assert gate.released < 15, "no run was published from the second worker node"
            gate.release(1)
            t0 = time.time()
            while len(st.statuses()) < gate.released:
                assert wait_job(client, job, timeout=0) is None, client.get_job_logs(job)[-3000:]
                assert time.time() - t0 < 300, client.get_job_logs(job)[-3000:]
                time.sleep(0.2)
        t0 = time.time()
        while not _holds_a_run(cluster.workers[0], gate):  # its trial has named its node and waits with a run
            assert time.time() - t0 < 300, client.get_job_logs(job)[-3000:]
            time.sleep(0.2)
        before = st.frame().set_index("run_key")["finished_at"].to_dict()
        _kill_node(cluster.workers[0])  # its trial (held at the gate) dies; Tune retries it on the other node
    finally:
        gate.open()

    assert wait_job(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    killed = cluster.workers[0].node_id
    cluster.cluster.remove_node(cluster.workers[0], allow_graceful=False)  # the dead node's other processes
    # the job's log: one line for the trial lost with the node, and none of Ray's long node-death text
    logs = client.get_job_logs(job)
    (tmp_path / "job.log").write_text(logs)  # kept with the test's temporary files, to read after a failure
    lost = re.findall(r"^trial (\S+) lost with node (\w+); retry (\d) of 3$", logs, re.M)
    assert lost and {(node, retry) for _, node, retry in lost} == {(killed, "1")}, logs[-3000:]
    raylet = [line for line in logs.splitlines() if "(raylet)" in line]  # Ray's own messages: once, one line each
    assert len(raylet) == len(set(raylet)) and "Uploading package" not in logs, logs[-3000:]
    expected = {r.run_key for r in expand(parse_grid(text))}
    versions = one_row_versions(bucket, "demo/runs/")
    assert set(versions) == expected and set(versions.values()) == {1}, "a run was published twice"
    df = Store(store).frame().set_index("run_key")
    assert set(df.index) == expected and (df["status"] == "ok").all(), df["error"].dropna().tolist()
    for key, t in before.items():
        assert df.loc[key, "finished_at"] == t, "a run finished before the kill ran again"
    assert df["node"].nunique() == 2  # trials ran on both worker nodes
    ref = reference(text)
    for key, row in df.iterrows():
        assert list(row["label_mapping"]) == ref[key].label_mapping
        for m in METRICS:
            assert row[m] == pytest.approx(getattr(ref[key], m), abs=1e-6), (key, m)

    # status, report and pandas read the store back from S3
    s = subprocess.run(VPGRID + ["status", store, "--json"], env=env(), capture_output=True, text=True, timeout=60)
    assert s.returncode == 0, s.stderr
    import json

    out = json.loads(s.stdout)
    assert (out["total"], out["done"], out["pending"], out["driver_alive"]) == (24, 24, 0, False)
    rep = subprocess.run(VPGRID + ["report", store, "--json"], env=env(), capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0 and sum(x["seeds"] for x in json.loads(rep.stdout)) == 24


def test_launch_on_the_cluster_itself_reports_metrics_to_tune_callbacks(cluster, s3_bucket, tmp_path):
    """`vpgrid launch --address HOST:PORT` from a cluster node (as over ssh), the store on S3; Tune's logger
    callbacks get each run's metrics."""
    text = grid(methods=["ilm"], seeds=[1], resources={"cpu": 1})
    g = write_grid(tmp_path, text)
    store = f"{s3_bucket}/onhead"
    log = tmp_path / "seen.jsonl"
    r = subprocess.run(VPGRID + ["launch", str(g), "--store", store, "--address", cluster.gcs, "-q",
                                 "--callback", "tests.recording_callback:Recorder"],
                       env={**env(), "RECORD_TO": str(log), "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == store and "4 ok, 0 failed of 4 runs launched" in r.stderr
    import json

    seen = [json.loads(line) for line in log.read_text().splitlines()]
    df = Store(store).frame().set_index("run_key")
    assert sorted(s["run_key"] for s in seen) == sorted(df.index)
    for s in seen:
        assert s["accuracy"] == pytest.approx(df.loc[s["run_key"], "accuracy"])


def _raylet_of(pid: int):
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        if child.name() == "raylet":
            return child
    return None


def test_a_launch_whose_own_node_dies_stops_in_bounded_time_with_one_line(tmp_path, gate):
    """The driver's raylet dies (as when Ray's runtime-env agent is killed and the raylet fate-shares with it):
    the launch ends within a bound, in one line that says how to resume, and the runs it finished stay. One run is
    released; the other trials wait at the gate, so runs are left when the node's death is noticed."""
    g = write_grid(tmp_path, grid(pack_size=2))
    # Ray's detector marks the node dead after 5 missed 1-s health checks (by default 5 missed 3-s ones): the
    # test is of what vpgrid does once Ray says so, not of how long Ray takes to say it
    ray_env = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    p = subprocess.Popen(VPGRID + ["launch", str(g), "--store", "s", "-q", "--num-cpus", "1"], cwd=tmp_path,
                         env={**env(), **gate.env, **ray_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        gate.release(1)
        t0 = time.time()
        while not list((tmp_path / "s" / "runs").glob("*.ok.parquet")) if (tmp_path / "s" / "runs").is_dir() else True:
            assert p.poll() is None and time.time() - t0 < 180, p.communicate()[1][-3000:] if p.poll() is not None else ""
            time.sleep(0.2)
        raylet = _raylet_of(p.pid)
        assert raylet is not None
        raylet.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=300)  # bounded: a launch that never notices hangs here and fails
    finally:
        reap(p)
    assert p.returncode == 4, err[-6000:]  # runs left pending
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the Ray cluster is gone") and f"vpgrid resume {tmp_path / 's'}" in last
    assert "Traceback" not in err
    assert len(Store(tmp_path / "s").statuses()) == 1


def _holds_a_run(node, gate: Gate) -> bool:
    """A process of this node's raylet waits at the gate with a finished, unpublished run (workers/gate.py)."""
    import psutil

    waiting = {int(f.name.split("-")[1]) for f in gate.path.glob("waiting-*")}
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return any(child.pid in waiting for child in raylet.children(recursive=True))


def _kill_node(node) -> None:
    """The node dies whole, as a machine does: its raylet SIGKILLed, then every process it started. A worker that
    outlived its raylet for a moment could otherwise still pass the gate and publish (seen at one torch thread)."""
    import psutil

    doomed = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
    node.kill_raylet()
    for proc in doomed:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_runs_of_a_trial_out_of_retries_stay_pending_and_resume_finishes_them(cluster, tmp_path):
    """With no retries, a trial whose node dies leaves its runs pending: the launch says so and exits 4."""
    extra = cluster.cluster.add_node(num_cpus=1, dashboard_agent_listen_port=free_port(),
                                     temp_dir=tempfile.mkdtemp(prefix="rw-x-", dir="/tmp"))
    cluster.cluster.wait_for_nodes()
    text = grid(pack_size=3, resources={"cpu": 1})
    g = write_grid(tmp_path, text)
    gate = cluster.gate
    gate.close()  # every node's trial waits at the gate, so the node killed below has one
    p = subprocess.Popen(VPGRID + ["launch", str(g), "--store", "s", "--address", cluster.gcs, "-q",
                                   "--max-failures", "0"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        gate.release(2)
        t0 = time.time()
        while len(Store(tmp_path / "s").statuses()) < 2 if (tmp_path / "s" / "runs").is_dir() else True:
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
        while not _holds_a_run(extra, gate):  # the extra node's trial waits at the gate: its death loses its runs
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
        _kill_node(extra)
        gate.open()
        out, err = p.communicate(timeout=400)
        cluster.cluster.remove_node(extra, allow_graceful=False)
    finally:
        gate.open()
        reap(p)
    assert p.returncode == 4, err[-3000:]
    pending = 24 - len(Store(tmp_path / "s").statuses())
    assert pending > 0 and f"{pending} runs are still pending" in err and "vpgrid resume" in err
    r = subprocess.run(VPGRID + ["resume", "s", "--address", cluster.gcs, "-q"], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0 and f"{pending} ok, 0 failed of {pending} runs launched" in r.stderr, r.stderr[-3000:]
    assert sorted(Store(tmp_path / "s").statuses()) == sorted(x.run_key for x in expand(parse_grid(text)))


def test_a_job_whose_driver_fails_at_once_ends_submit_and_status_says_so(cluster, s3_bucket, tmp_path):
    """The job's driver exits before its first heartbeat (here: a --callback the cluster cannot create; in the
    field: a module missing on the head): submit exits 1 with the job's last log lines, and status names the job
    and its error, whether submit recorded it or the Jobs server is asked."""
    g = write_grid(tmp_path, grid(resources={"cpu": 1}))
    store = f"{s3_bucket}/fails"
    r = subprocess.run(VPGRID + ["submit", str(g), "--address", cluster.jobs, "--store", store,
                                 "--callback", "no_such_module:Recorder"],
                       env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr
    job = Store(store).submitted_info()["job_id"]
    cause = "callback 'no_such_module:Recorder': cannot create no_such_module:Recorder: No module named 'no_such_module'"
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith("  | ") and cause in line for line in lines), r.stderr  # the job's last log lines
    assert lines[-1].startswith(f"error: job {job} failed before its driver started: error: {cause}"), lines[-1]
    assert "Traceback" not in lines[-1] and r.stdout == ""
    s = subprocess.run(VPGRID + ["status", store], env=env(), capture_output=True, text=True, timeout=60)
    assert s.returncode == 0 and f"submitted as job {job}, which failed before its driver ran: error: {cause}" in s.stdout
    # a submit that did not stay to see it (killed, or past its wait): status asks the Jobs server
    st = Store(store)
    st.write_submitted({k: v for k, v in st.submitted_info().items() if k not in ("failed", "state", "error")})
    s = subprocess.run(VPGRID + ["status", store, "--json"], env=env(), capture_output=True, text=True, timeout=60)
    import json

    out = json.loads(s.stdout)["job"]
    assert (out["job_id"], out["state"]) == (job, "failed") and cause in out["error"], out


def test_submit_checks_the_store_from_here_first(cluster, s3_server, tmp_path):
    """A missing bucket ends submit here in one line, before anything is submitted; a store this machine cannot
    reach is left to the cluster, which can (here: an S3 endpoint only the nodes are given)."""
    from ray.job_submission import JobSubmissionClient

    g = write_grid(tmp_path, grid(methods=["ilm"], seeds=[1], resources={"cpu": 1}))
    client = JobSubmissionClient(cluster.jobs)
    before = {j.submission_id for j in client.list_jobs()}
    r = subprocess.run(VPGRID + ["submit", str(g), "--address", cluster.jobs, "--store", "s3://no-such-bucket/x"],
                       env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: store s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist (or these credentials cannot "
        "see it); create it first or fix the URI"], r.stderr
    assert {j.submission_id for j in client.list_jobs()} == before  # nothing reached the cluster

    import boto3

    bucket = f"only-the-cluster-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    here = {**env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # no S3 answers there
    r = subprocess.run(VPGRID + ["submit", str(g), "--address", cluster.jobs, "--store", f"s3://{bucket}/x"],
                       env=here, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "note: the store cannot be reached from this machine" in r.stderr, r.stderr
    job = r.stdout.strip()
    assert f"job {job}: its driver started" in r.stderr  # seen in the job's log: the store is not readable here
    assert wait_job(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert len(Store(f"s3://{bucket}/x").statuses()) == 4


def test_submit_to_a_head_whose_job_agent_cannot_start_says_where_to_look(s3_bucket, tmp_path):
    """The dashboard agent's HTTP port is taken (another Ray on the machine): the head comes up without a job
    agent. submit waits with a progress line, then says what that means and where to look."""
    import socket

    from ray.cluster_utils import Cluster

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    dash = free_port()
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                "dashboard_port": dash, "dashboard_agent_listen_port": taken.getsockname()[1],
                                "temp_dir": tempfile.mkdtemp(prefix="ra-", dir="/tmp")})
    try:
        g = write_grid(tmp_path, grid())
        r = subprocess.run(VPGRID + ["submit", str(g), "--address", f"http://127.0.0.1:{dash}", "--store",
                                     f"{s3_bucket}/x"], env={**env(), "VPGRID_AGENT_WAIT_S": "5"}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    finally:
        c.shutdown()
        taken.close()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert any(line.startswith("waiting for the head's job agent") for line in lines), r.stderr
    assert lines[-1].startswith(f"error: the Ray Jobs server at http://127.0.0.1:{dash} found no job agent on the head")
    assert "dashboard_agent.log" in lines[-1] and "52365" in lines[-1] and "--dashboard-agent-listen-port" in lines[-1]


class _HeldFile:
    """A checkpoint served over HTTP on the loopback that is sent only once the test releases it: a run that
    downloads it is in flight, and stays so, for as long as the test needs."""

    def __init__(self, data: bytes) -> None:
        import http.server
        import threading

        self.asked, self.release = threading.Event(), threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                held.asked.set()
                held.release.wait(600)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the run that asked is gone (interrupted): nobody to send it to

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/demo.pt"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_ctrl_c_of_a_foreground_launch_says_it_was_interrupted_and_how_to_resume(tmp_path):
    """SIGINT to the launch's process group (as a terminal's Ctrl-C) while a run is in flight, held there by
    its checkpoint's download: the launch says it was interrupted, not that trials ran out of retries."""
    import hashlib
    import io

    import torch

    from workers.models.demo_cnn import DemoCNN

    buf = io.BytesIO()
    torch.save(DemoCNN(width=4).state_dict(), buf)
    held = _HeldFile(buf.getvalue())
    d = yaml.safe_load(TINY)
    d["models"][0]["weights"] = {"url": held.url, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    text = yaml.safe_dump({**d, "resources": {"cpu": 1}})
    g = write_grid(tmp_path, text)
    p = subprocess.Popen(VPGRID + ["launch", str(g), "--store", "s", "-q", "--num-cpus", "1"], cwd=tmp_path,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while not held.asked.wait(0.5):  # a trial is running its first run, which waits on the download
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.time() - t0 < 300, "no run asked for its checkpoint"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        held.close()
        reap(p)
    total = len(expand(parse_grid(text)))
    assert p.returncode == 4, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == f"interrupted (Ctrl-C): {total} runs are still pending; finish with: vpgrid resume {tmp_path / 's'}"
    assert "ran out of retries" not in err and "Traceback" not in err
    st = Store(tmp_path / "s")
    assert st.statuses() == {} and st.launch_info()["ended"] == "interrupted"
