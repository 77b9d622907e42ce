"""The cluster recipes in deploy/ and the image in docker/: each checked against what it is written for
(Ray's cluster schema, KubeRay's fields, the vpgrid CLI, Ray's SLURM pattern run for real on 127.0.0.1)."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAY_UP = DEPLOY / "ray-cluster.yaml"
RAYJOB = DEPLOY / "kuberay-rayjob.yaml"
SBATCH = DEPLOY / "slurm.sbatch"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
IMAGE = "registry.example.com/vpgrid:0.1.0"  # the one image every recipe and the README name
VPGRID_ENV = {"HF_HUB_OFFLINE", "VPGRID_CACHE", "VPGRID_DATA", "VPGRID_CKPT"}


def base(version: str) -> str:
    return version.split("+")[0]


# ---------------------------------------------------------------------------------------------- ray up
def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_ray_up_yaml_validates_against_rays_schema():
    cfg = yaml.safe_load(RAY_UP.read_text())
    jsonschema.validate(cfg, ray_schema())
    # Ray's own path for `ray up`: fill the provider's defaults, then validate (the same schema and more).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))
    # The schema is strict where it matters: a misspelt node-type field is an error.
    bad = yaml.safe_load(RAY_UP.read_text())
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema())


def test_ray_up_yaml_is_a_gpu_cluster_of_the_vpgrid_image():
    cfg = yaml.safe_load(RAY_UP.read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_workers = [n for name, n in types.items() if name != cfg["head_node_type"] and n["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and all(n["max_workers"] >= 1 for n in gpu_workers)
    assert cfg["docker"]["image"] == IMAGE
    env = {o.split()[1].split("=")[0] for o in cfg["docker"]["run_options"] if o.startswith("-e ")}
    assert VPGRID_ENV <= env
    assert "-e HF_HUB_OFFLINE=1" in cfg["docker"]["run_options"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:" in c for c in cfg["worker_start_ray_commands"])


# ------------------------------------------------------------------------------------------- KubeRay
def test_rayjob_manifest():
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["vpgrid", "launch"]
    assert argv[argv.index("--store") + 1].startswith("s3://")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == dockerfile_args()["RAY_VERSION"]  # the Ray inside the image
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    gpu = [c for c in workers if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, "no worker group with nvidia.com/gpu limits"
    for c in [head, *gpu]:
        assert c["image"] == IMAGE
        env = {e["name"]: e for e in c["env"]}
        assert VPGRID_ENV <= set(env)
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]  # from a Secret, never inline
            assert ref["key"] == key and ref["name"] == "vpgrid-s3"
    # docs/cluster.md's `kubectl create secret` makes the Secret the manifest reads.
    assert "kubectl create secret generic vpgrid-s3" in cluster_section()


# ------------------------------------------------------------------- every vpgrid command, against the CLI
def vpgrid_commands(text: str, markdown: bool = False) -> list[list[str]]:
    """argv of each `vpgrid <command> ARG ...` in TEXT: a shell line, a quoted string, a YAML value, or
    (Markdown) a line of a fenced code block. Prose like "the vpgrid image" is not a command."""
    if markdown:
        text = "\n".join(re.findall(r"```\w*\n(.*?)```", text, re.S))
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for m in re.finditer(r"(?<![\w/.:-])vpgrid\s+[a-z]+\s+(?=\S*[-/$\"':.~])", line):
            rest = line[m.start():]
            quote = line[m.start() - 1] if m.start() else ""
            if quote and quote in "\"'":
                rest = rest.split(quote)[0]
            argv = []
            for tok in shlex.split(rest, comments=True):
                if tok in (";", "&", "&&", "|", "||"):
                    break
                if not tok.startswith("$@"):  # the sbatch script's forwarded options: checked below
                    argv.append(tok)
            found.append(argv)
    # `sbatch deploy/slurm.sbatch GRID STORE OPTS` runs `vpgrid launch GRID --store STORE ... OPTS`.
    for m in re.finditer(r"sbatch deploy/slurm\.sbatch ([^\[\n]*)$", text, re.M):
        args = shlex.split(m.group(1), comments=True)
        found.append(["vpgrid", "launch", args[0], "--store", args[1], "--address", "ip:6379", "-q", *args[2:]])
    return found


README = ROOT / "README.md"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"


def cluster_section() -> str:
    """docs/cluster.md, where the recipes are documented (the README points there)."""
    return CLUSTER_DOC.read_text()


DOCS = ROOT / "docs"
RECIPE_FILES = [RAY_UP, RAYJOB, SBATCH, README]
# The recipes, and every Markdown page a user copies commands from: the README and the manual (its code blocks).
COMMAND_FILES = [*RECIPE_FILES, *sorted(DOCS.glob("*.md"))]
COMMANDS = [(str(p.relative_to(ROOT)), argv) for p in COMMAND_FILES
            for argv in vpgrid_commands(p.read_text(), p.suffix == ".md")]


def test_every_recipe_runs_vpgrid():
    names = {name for name, _ in COMMANDS}
    assert names >= {str(p.relative_to(ROOT)) for p in RECIPE_FILES}
    assert any(argv[:2] == ["vpgrid", "launch"] for _, argv in COMMANDS)
    # the manual's code blocks are parsed too (the pages with commands in them), the cluster page's included
    assert {"docs/cli.md", "docs/grid.md", "docs/extending.md", "docs/cluster.md"} <= names


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w}:{' '.join(a[1:3])}" for w, a in COMMANDS])
def test_vpgrid_command_parses_with_the_cli(where, argv):
    import typer.main

    from orchestrator.cli import app

    cli = typer.main.get_command(app)
    args = list(argv[2:])
    cmd = cli.commands[argv[1]]  # KeyError: not a vpgrid command
    cmd.make_context(argv[1], args)  # click.UsageError: unknown option, missing argument, bad value


# --------------------------------------------------------------------------------------------- SLURM
def test_sbatch_script_syntax_and_pattern():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text().replace("\\\n", " ")
    assert re.search(r'srun --nodes=1 --ntasks=1 -w "\$head_node"\s+ray start --head .*--block &', text)
    assert re.search(r'srun --nodes=1 --ntasks=1 -w "\$node"\s+ray start --address="\$ip_head" .*--block &', text)
    assert re.search(r'\nvpgrid launch "\$grid" --store "\$store" --address "\$ip_head"', text)


TINY = """\
name: tiny
models:
  - name: demo_cnn
    weights: random
    args: {width: 4}
    compressions: [dense]
methods: [rlm]
datasets: [{name: digits}]
shots: [1]
seeds: [1, 2]
train: {epochs: 2, batch_size: 8, input_size: 8}
pack_size: 1
"""

FAKE_SCONTROL = """#!/bin/bash
# stand-in: `scontrol show hostnames a,b` prints one name a line
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: unsupported: $*" >&2; exit 2; }
tr ',' '\\n' <<< "$3"
"""
FAKE_SRUN = """#!/bin/bash
# stand-in: log the step, drop srun's options, run the command on this machine
echo "srun $*" >> "$FAKE_SRUN_LOG"
while [ $# -gt 0 ]; do
  case $1 in
    -w|-N|-n|--nodelist|--nodes|--ntasks) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""
FAKE_HOSTNAME = """#!/bin/bash
# stand-in: this machine's address is 127.0.0.1 (the real one may print none, or several)
[ "$1" = "--ip-address" ] && { echo 127.0.0.1; exit 0; }
exec /bin/hostname "$@"
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pids_using(marker: str) -> list[int]:
    """Processes whose command line names MARKER (our private Ray temp dir): only ones this test started."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to check for leftover processes")
def test_sbatch_script_runs_a_tiny_grid_on_a_head_and_a_worker():
    """The real script with stand-ins for srun, scontrol and hostname: two Ray nodes on 127.0.0.1 with
    private ports and temp dir, a tiny grid to a temporary store, and no process left behind, even if something fails."""
    tmp = Path(tempfile.mkdtemp(prefix="vpslurm", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("hostname", FAKE_HOSTNAME)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp / "grid.yaml").write_text(TINY)
    gcs, dash, client, agent_head, agent_worker = free_ports(5)
    private = f"--temp-dir={tmp}/ray --min-worker-port=0 --max-worker-port=0"
    # A SLURM job runs with the submitter's PATH, on which the sbatch script finds `python` and `ray`: the
    # environment that runs these tests, whether or not it was activated.
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = dict(os.environ, PATH=path, FAKE_SRUN_LOG=str(tmp / "srun.log"),
               SLURM_JOB_NODELIST="node-a,node-b", SLURM_JOB_NUM_NODES="2", SLURM_CPUS_PER_TASK="1",
               RAY_PORT=str(gcs), VPGRID_CACHE=str(tmp / "cache"), RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               RAY_HEAD_ARGS=f"{private} --dashboard-port={dash} --ray-client-server-port={client} "
                             f"--dashboard-agent-listen-port={agent_head}",
               RAY_WORKER_ARGS=f"{private} --dashboard-agent-listen-port={agent_worker}")
    env.pop("RAY_ADDRESS", None)
    env.pop("SLURM_GPUS_PER_TASK", None)
    proc = subprocess.Popen(["bash", str(SBATCH), str(tmp / "grid.yaml"), str(tmp / "store")], env=env, cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, out[-4000:]
        assert "ray cluster at 127.0.0.1:" in out and ": 2 nodes" in out, out[-4000:]
        steps = (tmp / "srun.log").read_text().splitlines()
        assert any(s.startswith("srun --nodes=1 --ntasks=1 -w node-a ray start --head") for s in steps), steps
        assert any(s.startswith("srun --nodes=1 --ntasks=1 -w node-b ray start --address=127.0.0.1:") for s in steps)
        import pandas as pd

        rows = pd.read_parquet(tmp / "store" / "runs")
        assert sorted(rows["seed"]) == [1, 2] and set(rows["status"]) == {"ok"}
        # The script's trap stopped both Ray nodes: nothing of ours is left (give draining a moment).
        deadline = time.time() + 30
        while pids_using(str(tmp)) and time.time() < deadline:
            time.sleep(0.5)
        assert not pids_using(str(tmp))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids_using(str(tmp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------------------------- docker
def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M))


def test_dockerfile_pins_torch_to_the_base_images_cuda():
    text = DOCKERFILE.read_text()
    args = dockerfile_args()
    assert re.fullmatch(r"cu\d{3}", args["CUDA"])
    # One ARG names the base image's CUDA and the wheel index: they cannot disagree.
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{CUDA\}$", text, re.M)
    assert "--index-url \"https://download.pytorch.org/whl/${CUDA}\"" in text
    assert '"torch==${TORCH}" "torchvision==${TORCHVISION}"' in text
    # ... and the build checks torch's CUDA against the image's ($CUDA_VERSION of the nvidia/cuda base).
    assert "torch.version.cuda == img" in text
    # The image's versions are the project's: torch within pyproject's range, Ray the lock's, Python allowed.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    assert deps["torch"].specifier.contains(args["TORCH"]) and deps["torchvision"].specifier.contains(args["TORCHVISION"])
    assert lock_pins()["ray"] == args["RAY_VERSION"]
    assert SpecifierSet(project["requires-python"]).contains("3.11")  # the image is py311


def test_dockerfile_installs_vpgrid_non_editable_from_the_lock():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install [^\n]*", text)
    assert not any(re.search(r"\s(-e|--editable)\s", i) for i in installs)
    assert any("-r /tmp/vpgrid-src/docker/requirements.lock" in i for i in installs)
    assert any(i.rstrip(" \\").endswith("--no-deps /tmp/vpgrid-src") for i in installs)
    assert "pip check" in text


def test_dockerignore_keeps_what_the_dockerfile_copies():
    import fnmatch

    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    sources = [s for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(), re.M) for s in line.split()]
    assert {"pyproject.toml", "orchestrator", "workers", "grids", "docker/requirements.lock"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pat) or src.startswith(pat.rstrip("/") + "/") for pat in ignored), src


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9-]+)==([\w.+!-]+)", line.strip())
            assert m, f"not an exact, normalised pin: {line!r}"
            pins[m.group(1)] = m.group(2)
    return pins


def test_lock_pins_every_dependency_of_pyproject():
    pins = lock_pins()
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for req in deps:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in ("torch", "torchvision"):
            assert name not in pins  # the Dockerfile pins them, with the CUDA build
            continue
        assert name in pins, f"{req.name} is not in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]  # they come with the CUDA torch


# The image's Python and platform: the lock's markers are evaluated for them, not for whoever runs the tests.
IMAGE_ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
             "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def test_lock_is_consistent_where_this_environment_can_tell():
    """The lock is the image's record, not a picture of the environment running the tests (a fresh install
    resolves newer releases the day they appear). What can be checked offline: for every pinned package that is
    installed here at the pinned version, each of its requirements (markers for the image's py311 on Linux) is
    pinned too, at a version that satisfies it; torch's own dependencies come with the CUDA torch."""
    pins = lock_pins()
    checked = 0
    for name, version in pins.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if dist.version != version:
            continue  # another release is installed here: its requirements say nothing of the pinned one's
        checked += 1
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({**IMAGE_ENV, "extra": ""}):
                continue
            dep = re.sub(r"[-_.]+", "-", req.name).lower()
            if dep in ("torch", "torchvision") or dep.startswith("nvidia-") or dep == "triton":
                continue
            assert dep in pins, f"{name}=={version} needs {req}, which {LOCK.name} does not pin"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{dep}=={pins[dep]} breaks {name}'s {req}"
    assert checked >= 1, "no pinned package is installed at its pinned version: nothing could be checked"


def test_make_lock_writes_a_lock_of_the_same_form():
    """docker/make_lock.py (the maintainers' way to refresh the lock) runs here and pins every project dependency;
    its versions are this environment's, so only the form and the names are compared."""
    out = subprocess.run([sys.executable, "docker/make_lock.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    fresh = {m.group(1) for m in re.finditer(r"^([a-z0-9-]+)==\S+$", out.stdout, re.M)}
    deps = [re.sub(r"[-_.]+", "-", Requirement(d).name).lower()
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert {d for d in deps if d not in ("torch", "torchvision")} <= fresh and {"torch", "torchvision"}.isdisjoint(fresh)


def test_readme_commands_name_files_that_exist_and_the_one_image():
    text = cluster_section()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    paths = set(re.findall(r"(?<![\w/])((?:deploy|docker|grids)/[\w.-]+(?:/[\w.-]+)*)", blocks))
    assert paths >= {"docker/Dockerfile", "deploy/ray-cluster.yaml", "deploy/kuberay-rayjob.yaml", "deploy/slurm.sbatch"}
    for p in paths:
        assert (ROOT / p).exists(), p
    assert f"docker build -f docker/Dockerfile -t {IMAGE} ." in blocks
    assert f"docker push {IMAGE}" in blocks
    tools = {line.split()[0] for line in blocks.splitlines() if line.strip() and "=" not in line.split()[0]}
    assert tools <= {"docker", "ray", "vpgrid", "kubectl", "sbatch"}, tools


def test_bare_metal_ray_start_lines_parse_with_rays_own_cli():
    """docs/cluster.md's `ray start` lines (a head, a worker, the agent's port moved) and every option its
    ports table names are options of the installed Ray's `ray start`."""
    from ray.scripts.scripts import start

    text = cluster_section()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    lines = [shlex.split(line, comments=True) for line in blocks.splitlines() if line.startswith("ray start")]
    assert any("--head" in argv for argv in lines) and any("--address" in argv for argv in lines)
    assert any("--dashboard-agent-listen-port" in argv for argv in lines)
    for argv in lines:
        start.make_context("start", argv[2:])  # click.UsageError: no such option, bad value
    table = text[text.index("| port | on |"):text.index("Behind a firewall")]
    named = set(re.findall(r"`(--[a-z-]+)`", table))
    known = {opt for param in start.params for opt in param.opts}
    assert len(named) >= 10 and named <= known, named - known
