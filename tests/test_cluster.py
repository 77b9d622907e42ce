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
from orchestrator.store import Store
from tests.conftest import TINY, Gate, free_port, write_grid

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
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
    # runtime environments (short paths: Ray's sockets live there).
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                "dashboard_port": port, "temp_dir": tempfile.mkdtemp(prefix="rh-", dir="/tmp")})
    try:
        workers = [c.add_node(num_cpus=1, temp_dir=tempfile.mkdtemp(prefix=f"rw{i}-", dir="/tmp")) for i in range(2)]
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
                       env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert job.startswith("vpgrid-tiny-") and "vpgrid status" in r.stderr
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
        before = st.frame().set_index("run_key")["finished_at"].to_dict()
        cluster.workers[0].kill_raylet()  # SIGKILL: its trial (held at the gate) dies; Tune retries it on the other node
    finally:
        gate.open()

    assert wait_job(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    cluster.cluster.remove_node(cluster.workers[0], allow_graceful=False)  # the dead node's other processes
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
    p = subprocess.Popen(VPGRID + ["launch", str(g), "--store", "s", "-q", "--num-cpus", "1"], cwd=tmp_path,
                         env={**env(), **gate.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
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
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert p.returncode == 4, err[-3000:]  # runs left pending
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the Ray cluster is gone") and f"vpgrid resume {tmp_path / 's'}" in last
    assert "Traceback" not in err
    assert len(Store(tmp_path / "s").statuses()) == 1


def _runs_a_trial(node) -> bool:
    """A Tune trial's actor (ImplicitFunc) is among the processes of this node's raylet."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for child in raylet.children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(child.cmdline()):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def test_runs_of_a_trial_out_of_retries_stay_pending_and_resume_finishes_them(cluster, tmp_path):
    """With no retries, a trial whose node dies leaves its runs pending: the launch says so and exits 4."""
    extra = cluster.cluster.add_node(num_cpus=1, temp_dir=tempfile.mkdtemp(prefix="rw-x-", dir="/tmp"))
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
        while not _runs_a_trial(extra):  # the extra node holds a trial at the gate: its death loses that trial
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
        extra.kill_raylet()
        gate.open()
        out, err = p.communicate(timeout=400)
        cluster.cluster.remove_node(extra, allow_graceful=False)
    finally:
        gate.open()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert p.returncode == 4, err[-3000:]
    pending = 24 - len(Store(tmp_path / "s").statuses())
    assert pending > 0 and f"{pending} runs are still pending" in err and "vpgrid resume" in err
    r = subprocess.run(VPGRID + ["resume", "s", "--address", cluster.gcs, "-q"], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0 and f"{pending} ok, 0 failed of {pending} runs launched" in r.stderr, r.stderr[-3000:]
    assert sorted(Store(tmp_path / "s").statuses()) == sorted(x.run_key for x in expand(parse_grid(text)))
