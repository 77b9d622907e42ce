"""Submit a launch to a Ray cluster as a Ray Job: the driver runs on the cluster, this machine only submits.

The job's runtime_env ships this tree's `orchestrator` and `workers` packages (py_modules) and the grid
(working_dir), so the cluster runs exactly the code and grid that were submitted. Before submitting, the store is
checked from here when this machine reaches it (a missing bucket or refused credentials end here, in one line), and
the grid and a "submitted as job ID" record are written to it, so `status` can tell the user what is happening
before the driver starts. After submitting, the job is followed until its driver's first heartbeat: a driver that
dies at once (a missing module, a bad option) ends `submit` with exit 1 and the job's last log lines.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import yaml

from workers.core.errors import LaunchError, StoreError
from orchestrator.jobs import AGENT_HINT, DRIVER_STARTED, JOB_FAILED_STATES, first_line, log_tail
from orchestrator.launch import check_address
from workers.core.store import Store

AGENT_WAIT_S = float(os.environ.get("VPGRID_AGENT_WAIT_S", 180))  # a loaded head can take minutes to start its agent
FOLLOW_S = float(os.environ.get("VPGRID_SUBMIT_FOLLOW_S", 600))  # runtime-env set-up on a cold head takes minutes
DRIVER_SCRIPT = Path(__file__).with_name("job_driver.sh")
# pyarrow's S3 errors when no S3 endpoint answers from here (curl: cannot connect / resolve / timed out)
UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Could not resolve", "Couldn't resolve",
               "timed out", "Timeout", "Connection refused")


class JobFailed(LaunchError):
    """The submitted job ended before its driver started; the message holds its last log lines."""


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def job_entrypoint(store: str, args: list[str], data_root: Optional[str]) -> str:
    """The job's shell command; every piece is quoted, so no grid or store name can inject shell syntax. The
    driver script picks the interpreter Ray runs on the head, not the head's PATH's `python`."""
    cmd = ["/bin/sh", DRIVER_SCRIPT.name, "launch", "grid.yaml", "--store", store, *args]
    if data_root:
        cmd += ["--data-root", data_root]
    return shlex.join(cmd)


def _relative(store: str) -> bool:
    if store.lower().startswith("file://"):
        return not store[len("file://"):].startswith("/")
    return "://" not in store and not Path(store).is_absolute()


def prepare_store(st: Store, grid_text: str, say: Callable[[str], None] = _err) -> bool:
    """Write the grid to the store from this machine when it reaches it; returns whether it did.

    A missing bucket or refused credentials raise StoreError (the job would fail the same way on the cluster). A
    store this machine cannot reach (an endpoint or a mount only the cluster sees) is left to the cluster: say so."""
    if st.local and not (Path(st.root).exists() or Path(st.root).parent.is_dir()):
        say(f"note: {st.root} is not visible from this machine; the job's driver creates it on the cluster")
        return False
    try:
        st.create(grid_text)
        return True
    except StoreError as e:
        if st.local or not any(s in str(e) for s in UNREACHABLE):
            raise
        say(f"note: the store cannot be reached from this machine ({first_line(str(e))}); "
            "the job's driver will use it from the cluster")
        return False


def _quiet_ray(verbose: bool) -> None:
    """Ray's "Uploading package ..." and "Creating a file package ..." INFO lines, unless -v. The SDK's module sets
    its own logger to INFO when imported: import it first, then set the level."""
    import logging

    import ray.dashboard.modules.dashboard_sdk  # noqa: F401

    for name in ("ray.dashboard", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, RuntimeError from the dashboard: one line either way
        raise LaunchError(f"could not submit to the Ray Jobs server at {address}: {first_line(str(e))}") from None


def _submit(client, address: str, kwargs: dict, say: Callable[[str], None]) -> str:
    """Submit once the head's job agent answers: a progress line while waiting, and what it means if it never
    does (Ray alone says 'Request failed with status code 500: No available agent to submit job')."""
    t0 = next_note = time.time()
    while True:
        try:
            return client.submit_job(**kwargs)
        except Exception as e:
            first = first_line(str(e))
            if "No available agent" not in first:
                raise LaunchError(f"could not submit to the Ray Jobs server at {address}: {first}") from None
            # a head that has just started has no job agent yet: wait for it a while
            waited = time.time() - t0
            if time.time() >= next_note:
                say(f"waiting for the head's job agent ({waited:.0f} s of at most {AGENT_WAIT_S:.0f} s; "
                    "Ray says: No available agent) ...")
                next_note = time.time() + 30
            if waited >= AGENT_WAIT_S:
                raise LaunchError(f"the Ray Jobs server at {address} found no job agent on the head in "
                                  f"{waited:.0f} s (Ray: {first}). {AGENT_HINT}") from None
            time.sleep(2)  # poll interval


def submit_job(address: str, grid_text: str, args: list[str], store: str, data_root: Optional[str], *,
               check_store: bool = True, follow: bool = True, verbose: bool = False,
               say: Callable[[str], None] = _err) -> str:
    check_address(address)
    if _relative(store):
        raise LaunchError(f"--store {store}: the job runs on the cluster, so give an s3:// or gs:// URI or an "
                          "absolute path that every node mounts")
    st = Store(store)  # a malformed URI fails here, before anything is submitted
    store = st.root
    _quiet_ray(verbose)
    client = _client(address)  # a Jobs server that does not answer: nothing is written
    reachable = prepare_store(st, grid_text, say) if check_store else False
    name = (yaml.safe_load(grid_text) or {}).get("name", "grid")
    root = Path(__file__).resolve().parents[1]
    job_id = f"vpgrid-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="vpgrid-job-") as staging:
        (Path(staging) / "grid.yaml").write_text(grid_text)
        shutil.copy(DRIVER_SCRIPT, Path(staging) / DRIVER_SCRIPT.name)
        runtime_env = {"working_dir": staging, "py_modules": [str(root / "orchestrator"), str(root / "workers")],
                       # VPGRID_JOB_ID: the driver writes it into launch.json, so its heartbeat names its job
                       "env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "VPGRID_JOB_ID": job_id}}
        _submit(client, address, dict(entrypoint=job_entrypoint(store, args, data_root), runtime_env=runtime_env,
                                      submission_id=job_id, metadata={"vpgrid_store": store, "vpgrid_grid": str(name)}),
                say)
    record = {"job_id": job_id, "address": address, "submitted": time.time(), "host": socket.gethostname()}
    if reachable:
        st.write_submitted(record)
    if follow:
        follow_job(client, job_id, st if reachable else None, record, say)
    return job_id


def follow_job(client, job_id: str, st: Optional[Store], record: dict, say: Callable[[str], None] = _err) -> None:
    """Wait (at most FOLLOW_S) for the driver's first heartbeat: in the store when this machine reads it, else its
    start line in the job's log. A job that ends first without success raises JobFailed with its last log lines."""
    t0, last, note_every = time.time(), None, 30.0
    next_note = t0 + note_every
    while True:
        try:
            state = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        except Exception as e:  # the head went away right after accepting the job
            raise LaunchError(f"job {job_id} was submitted, but its status cannot be read: {first_line(str(e))}; "
                              f"follow it with: ray job logs --address {record['address']} --follow {job_id}") from None
        if _driver_started(client, job_id, st):
            say(f"job {job_id}: its driver started")
            return
        if state == "SUCCEEDED":  # e.g. nothing left to run: the driver ended before any heartbeat
            say(f"job {job_id}: succeeded")
            return
        if state in JOB_FAILED_STATES:
            logs = client.get_job_logs(job_id)
            info = client.get_job_info(job_id)
            error = log_tail(logs, 1)[-1:] or [first_line(info.message or state)]
            if st is not None:
                try:
                    st.write_submitted({**record, "failed": time.time(), "state": state, "error": error[0]})
                except (StoreError, OSError):
                    pass  # the failure is reported here anyway
            lines = log_tail(logs, 15)
            for line in lines:
                say(f"  | {line}")
            raise JobFailed(f"job {job_id} {state.lower()} before its driver started: {error[0]} "
                            f"(whole log: ray job logs --address {record['address']} {job_id})")
        if state != last or time.time() >= next_note:
            say(f"job {job_id}: {state.lower()}, waiting for its driver's first heartbeat "
                f"({time.time() - t0:.0f} s of at most {FOLLOW_S:.0f} s) ...")
            last, next_note = state, time.time() + note_every
        if time.time() - t0 > FOLLOW_S:
            say(f"job {job_id} is still {state.lower()} after {FOLLOW_S:.0f} s with no driver heartbeat; not waiting "
                f"longer. Follow it with: ray job logs --address {record['address']} --follow {job_id}")
            return
        time.sleep(1.0)  # poll interval


def _driver_started(client, job_id: str, st: Optional[Store]) -> bool:
    if st is not None:
        try:
            return st.launch_info().get("job_id") == job_id
        except (StoreError, OSError):
            pass  # a blip: the job's log says it too
    try:
        return DRIVER_STARTED in client.get_job_logs(job_id)
    except Exception:
        return False
