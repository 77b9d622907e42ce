"""What a store's submitted Ray Job is doing, as `status` reports it. No Ray import: `status` starts fast, so the
job is asked through the Ray Jobs REST API (GET /api/jobs/ID) with a short timeout, and only when the store alone
cannot tell (a submitted job whose driver has not written a heartbeat, or whose driver is gone)."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Optional

# The line the driver prints when a Ray Job's launch has written its first heartbeat (`submit` looks for it in the
# job's log when it cannot read the store itself).
DRIVER_STARTED = "vpgrid: driver started"
JOB_FAILED_STATES = ("FAILED", "STOPPED")
AGENT_HINT = ("The head's dashboard agent, which runs jobs, is not up: see dashboard_agent.log in the head's Ray "
              "logs (/tmp/ray/session_latest/logs/). A common cause is its port, 52365, taken by another program or "
              "another Ray on that machine: start the head with `ray start --head --dashboard-agent-listen-port "
              "FREE_PORT` (docs/cluster.md)")
REST_TIMEOUT_S = 3.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def log_tail(logs: str, n: int) -> list[str]:
    """The last n non-empty lines of a job's log, without colour codes."""
    lines = [_ANSI.sub("", line).rstrip() for line in (logs or "").splitlines()]
    return [line for line in lines if line.strip()][-n:]


def job_details(address: str, job_id: str) -> Optional[dict]:
    """The Jobs server's record of a job, or None when it cannot be asked from here (unreachable, unknown job)."""
    url = f"{address.rstrip('/')}/api/jobs/{job_id}"
    try:
        with urllib.request.urlopen(url, timeout=REST_TIMEOUT_S) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def job_state(record: dict, launch: dict, driver_alive: bool) -> Optional[dict]:
    """What `status` says about the job in a store's submitted.json, given the store's launch.json.

    None when there is no submitted job, or its driver is running or ended cleanly (the store says it all). Else
    {"job_id", "address", "state": "waiting" | "failed", "error"}: waiting for its driver, or failed (as recorded
    by `submit`, or as the Jobs server says), with the error."""
    if not record.get("job_id"):
        return None
    started = launch.get("job_id") == record["job_id"]
    if started and (driver_alive or "finished" in launch):
        return None
    if not started and float(launch.get("started", 0)) > float(record.get("submitted", 0)):
        return None  # a later launch (from a node, or another job) has taken the store over
    out = {"job_id": record["job_id"], "address": record.get("address"), "state": "waiting", "error": None}
    if record.get("failed"):
        return {**out, "state": "failed", "error": record.get("error")}
    details = job_details(record["address"], record["job_id"]) if record.get("address") else None
    if details and details.get("status") in JOB_FAILED_STATES:
        message = details.get("message") or details["status"]
        # Ray's message holds the entrypoint's last log lines; the last one is the error
        return {**out, "state": "failed", "error": (log_tail(message, 1) or [first_line(message)])[0]}
    if started or (details and details.get("status") == "SUCCEEDED"):
        return None  # the driver ran and is gone (`status` says how to resume), or had nothing to run
    if details is None:
        out["error"] = f"its Jobs server {record.get('address')} cannot be asked from here"
    return out
