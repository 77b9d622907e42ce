"""Submit a launch to a Ray cluster as a Ray Job: the driver runs on the cluster, this machine only submits.

The job's runtime_env ships this tree's `orchestrator` and `workers` packages (py_modules) and the grid
(working_dir), so the cluster runs exactly the code and grid that were submitted.
"""
from __future__ import annotations

import shlex
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

import yaml

from orchestrator.launch import LaunchError, check_address
from orchestrator.store import Store

AGENT_WAIT_S = 180.0  # a loaded head can take minutes to start its job agent


def job_entrypoint(store: str, args: list[str], data_root: Optional[str]) -> str:
    """The job's shell command; every piece is quoted, so no grid or store name can inject shell syntax."""
    cmd = ["python", "-m", "orchestrator.cli", "launch", "grid.yaml", "--store", store, *args]
    if data_root:
        cmd += ["--data-root", data_root]
    return shlex.join(cmd)


def submit_job(address: str, grid_text: str, args: list[str], store: str, data_root: Optional[str]) -> str:
    check_address(address)
    if "://" not in store and not Path(store).is_absolute():
        raise LaunchError(f"--store {store}: the job runs on the cluster, so give an s3:// or gs:// URI or an "
                          "absolute path that every node mounts")
    store = Store(store).root  # a malformed URI fails here, before anything is submitted
    name = (yaml.safe_load(grid_text) or {}).get("name", "grid")
    root = Path(__file__).resolve().parents[1]
    import logging

    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray.dashboard").setLevel(logging.WARNING)  # "Uploading package ..." lines

    with tempfile.TemporaryDirectory(prefix="vpgrid-job-") as staging:
        (Path(staging) / "grid.yaml").write_text(grid_text)
        runtime_env = {"working_dir": staging, "py_modules": [str(root / "orchestrator"), str(root / "workers")],
                       "env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}}
        job_id = f"vpgrid-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        t0 = time.time()
        while True:
            try:
                client = JobSubmissionClient(address)
                return client.submit_job(entrypoint=job_entrypoint(store, args, data_root), runtime_env=runtime_env,
                                         submission_id=job_id, metadata={"vpgrid_store": store, "vpgrid_grid": str(name)})
            except Exception as e:  # ConnectionError, RuntimeError from the dashboard: one line either way
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                # a head that has just started has no job agent yet: wait for it a while
                if "No available agent" in first and time.time() - t0 < AGENT_WAIT_S:
                    time.sleep(2)
                    continue
                raise LaunchError(f"could not submit to the Ray Jobs server at {address}: {first}") from None
