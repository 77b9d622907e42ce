import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

# Every test belongs to one tier: its own marker, else its module's `pytestmark` (the closest wins).
#   unit         no Ray, no subprocess, no server, under a second or two each: the quick check while coding
#   integration  a real local Ray launch, a fresh interpreter, or a full-size model, training or every figure
#   cluster      a multi-node Ray cluster, an S3 server on the loopback, Ray Jobs
# `python -m pytest -q` runs them all; `--tier unit` (or integration, cluster) runs one.
TIERS = ("unit", "integration", "cluster")
NEEDS_CLUSTER_TIER = {"s3_server", "s3_bucket", "s3_with_auth", "cluster"}


def tier_of(item) -> str | None:
    return next((m.name for m in item.iter_markers() if m.name in TIERS), None)


def pytest_addoption(parser):
    parser.addoption("--tier", choices=TIERS, help="run the tests of one tier only")


def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        tier = tier_of(item)
        if tier is None:
            wrong.append(f"{item.nodeid}: no tier (mark it, or its module, with one of {', '.join(TIERS)})")
        elif "ray_head" in item.fixturenames and tier == "unit":
            wrong.append(f"{item.nodeid}: uses ray_head but is in the unit tier")
        elif NEEDS_CLUSTER_TIER & set(item.fixturenames) and tier != "cluster":
            wrong.append(f"{item.nodeid}: uses {', '.join(sorted(NEEDS_CLUSTER_TIER & set(item.fixturenames)))} "
                         f"but is in the {tier} tier, not cluster")
    if wrong:
        raise pytest.UsageError("tests without their tier:\n  " + "\n  ".join(wrong))
    want = config.getoption("--tier")
    if want:
        keep = [i for i in items if tier_of(i) == want]
        config.hook.pytest_deselected(items=[i for i in items if tier_of(i) != want])
        items[:] = keep

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Node caches (weights, decoded datasets) of every test and every Ray worker it starts: one per session,
# never the user's ~/.cache/vpgrid.
os.environ.setdefault("VPGRID_CACHE", tempfile.mkdtemp(prefix="vpgrid-test-cache-"))

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


class Gate:
    """The test side of workers/gate.py: a launch started with `gate.env` publishes exactly as many runs as
    tokens were released (then its workers wait), so a test stops a grid at a known point on any machine."""

    def __init__(self, path: Path):
        self.path, self.released = path, 0
        path.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict:
        return {"VPGRID_TEST_GATE": str(self.path)}

    def release(self, n: int) -> None:
        for _ in range(n):
            self.released += 1
            (self.path / f"token-{self.released:06d}").touch()

    def open(self) -> None:
        """Every further run publishes at once."""
        (self.path / "open").touch()

    def close(self) -> None:
        """Back to holding: no open file, no unclaimed token."""
        for f in [self.path / "open", *self.path.glob("token-*")]:
            f.unlink(missing_ok=True)

    def kill_holders(self, timeout: float = 120) -> None:
        """SIGKILL every process started with this gate in its environment (Ray's workers outlive a SIGKILLed
        driver, waiting at the gate, and would publish once it opens) and wait until they are gone."""
        import psutil

        t0 = time.time()
        while True:
            alive = []
            for p in psutil.process_iter():
                try:
                    if p.pid != os.getpid() and p.environ().get("VPGRID_TEST_GATE") == str(self.path):
                        p.kill()
                        alive.append(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if not alive:
                return
            assert time.time() - t0 < timeout, f"{len(alive)} processes of a killed launch outlive SIGKILL"
            psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many small ops: on 2 shared cores one torch thread was several times faster than two
    contending ones (measured: test_vit 18 s against 44-140 s). Restored for the other files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reap(p: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything in its session's process group (a
    launch's local Ray: its GCS, raylet and workers), whether it is still running or not."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while True:
        assert proc.poll() is None, f"server on port {port} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() - t0 < timeout, f"nothing listens on port {port} after {timeout} s"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One local Ray head for the launches that kill neither Ray nor a node (as Ray's own tests share one): they
    join it with `--address` instead of starting and stopping a Ray each. As many CPUs as a launch's own local Ray
    would have, no GPU; its own temp dir and ports. Its workers wait at `gate` while a test holds it closed (it is
    open otherwise). Stopped, with every process it started, at the end of the session."""
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    gate = Gate(tmp_path_factory.mktemp("head-gate"))
    gate.open()
    # Cluster() records its address in Ray's default temp dir without creating it
    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    saved = os.environ.get("VPGRID_TEST_GATE")
    os.environ.update(gate.env)  # the head's raylet hands its environment to the workers it starts
    try:
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": os.cpu_count(), "dashboard_agent_listen_port": free_port(),
                                    "temp_dir": tempfile.mkdtemp(prefix="rs-", dir="/tmp")})
    finally:
        if saved is None:
            os.environ.pop("VPGRID_TEST_GATE")
        else:
            os.environ["VPGRID_TEST_GATE"] = saved
    try:
        yield SimpleNamespace(address=c.address, gate=gate)
    finally:
        gate.open()
        c.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's server mode) on the loopback, and the standard AWS variables pointing
    at it for this process and the processes it starts."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_for_port(port, proc)
        os.environ.update(env)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the S3 server: its s3:// URI."""
    import boto3

    name = f"vpgrid-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"
