"""A corpus of malformed inputs (tests/bad_inputs/ and CLI uses below): each is refused before anything runs,
with one line that names the file, the field and the value, the right exit code, and nothing written."""
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import write_grid
from workers.checkpoints import CheckpointError, load_state_dict, resolve

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parent / "bad_inputs"
GRIDS = sorted(CORPUS.glob("*.yaml"))
cli = CliRunner()


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _expected(grid: Path) -> str:
    first = grid.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{grid.name}: first line must be '# expect: <message>'"
    return first[len("# expect: "):]


def test_the_corpus_covers_the_issue():
    names = {g.stem for g in GRIDS}
    assert {"sparsity_out_of_range", "bits_zero", "malformed_sha256", "unknown_model_arg", "wrong_model_arg_type",
            "zero_runs", "unknown_dataset_arg", "bad_weights_key", "unknown_checkpoint_format"} <= names


# `# only: launch` under the expectation: plan (torch-free) cannot see it
CASES = [(g, c) for g in GRIDS for c in ("plan", "launch") if c == "launch" or "\n# only: launch" not in g.read_text()]


@pytest.mark.parametrize("grid, command", CASES, ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_bad_grid_is_refused_in_one_line_and_writes_nothing(grid, command, tmp_path, monkeypatch):
    from orchestrator.cli import app

    monkeypatch.chdir(tmp_path)  # the default store would be results/<name> here
    args = [command, str(grid)] + (["--store", str(tmp_path / "s")] if command == "launch" else [])
    r = cli.invoke(app, args)
    assert r.exit_code == 1, r.output
    line = _one_line(r.stderr)
    assert line.startswith(f"error: {grid}: ") and _expected(grid) in line
    assert list(tmp_path.iterdir()) == []  # no store, no results/


# (arguments, exit code, text the one line must hold); GRID and STORE are filled in by the test
CLI_USES = [
    (["report", "STORE", "--metric", "acc"], 2, "--metric: unknown value 'acc' (valid: accuracy, ece, ece_paper, conf_correct, kl_incorrect, kl_incorrect_paper)"),
    (["report", "STORE", "--metric", "accuracy", "--metric", "f1"], 2, "unknown value 'f1'"),
    (["launch", "GRID", "--num-cpus", "-2"], 2, "--num-cpus -2 must be > 0"),
    (["launch", "GRID", "--num-cpus", "0"], 2, "--num-cpus 0 must be > 0"),
    (["launch", "GRID", "--num-gpus", "-1"], 2, "--num-gpus -1 must be >= 0"),
    (["resume", "STORE", "--num-cpus", "-2"], 2, "--num-cpus -2 must be > 0"),
    (["status", "STORE", "--interval", "0"], 2, "--interval 0 must be > 0"),
    (["list", "modles"], 2, "unknown value 'modles'; did you mean 'models'?"),
    (["bench", "plann"], 2, "unknown benchmark 'plann'"),
]


@pytest.mark.parametrize("args, code, needle", CLI_USES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_cli_use_is_one_line(args, code, needle, tmp_path, monkeypatch):
    from orchestrator.cli import app

    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path)
    args = [str(grid) if a == "GRID" else str(tmp_path / "s") if a == "STORE" else a for a in args]
    r = cli.invoke(app, args)
    assert r.exit_code == code, r.output
    assert needle in _one_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no store, no results/


@pytest.mark.parametrize("command", ["status", "resume"])
def test_store_with_a_corrupt_saved_grid(command, tmp_path):
    from orchestrator.cli import app

    saved = tmp_path / "s" / "_vpgrid" / "grid.yaml"
    saved.parent.mkdir(parents=True)
    shutil.copy(CORPUS / "stores" / "truncated_grid.yaml", saved)
    r = cli.invoke(app, [command, str(tmp_path / "s")])
    assert r.exit_code == 1, r.output
    line = _one_line(r.stderr)
    assert str(saved) in line and "not valid YAML at line 4" in line
    assert sorted(p.name for p in saved.parent.iterdir()) == ["grid.yaml"]  # resume wrote nothing


def _zip_checkpoint(path: Path) -> bytes:
    import torch

    torch.save({"w": torch.ones(3)}, path)
    return path.read_bytes()


class NotAllowed:  # a class torch.load(weights_only=True) must refuse to rebuild
    pass


def _bad_checkpoints(d: Path) -> dict[str, tuple[Path, str]]:
    """file kind -> (file, what the message must say to do)."""
    import torch

    good = _zip_checkpoint(d / "good.pt")
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "text.pt").write_text("these are not weights\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    torch.save({"w": NotAllowed()}, d / "forbidden_global.pt")
    torch.save([torch.ones(1)], d / "a_list.pt")
    return {"truncated": (d / "truncated.pt", "re-download it or check its format"),
            "text": (d / "text.pt", "re-download it or check its format"),
            "empty": (d / "empty.pt", "re-download it or check its format"),
            "safetensors": (d / "bad.safetensors", "re-download it or check its format"),
            "forbidden_global": (d / "forbidden_global.pt", "NotAllowed to unpickle, which vpgrid refuses"),
            "not_a_state_dict": (d / "a_list.pt", "expected a state dict, found list; check the checkpoint's `format`")}


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "safetensors", "forbidden_global", "not_a_state_dict"])
def test_unreadable_checkpoint_names_the_file_and_the_fix(kind, tmp_path):
    path, fix = _bad_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointError) as e:
        load_state_dict(path)
    msg = str(e.value)
    assert str(path) in msg and fix in msg and "\n" not in msg


def test_unreadable_checkpoint_through_a_model_build(tmp_path):
    """The way a run meets it: the grid's weights path, resolved, then loaded by the model family."""
    from workers.models import build_model

    path, fix = _bad_checkpoints(tmp_path)["truncated"]
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as e:
        build_model("demo_cnn", resolve({"path": str(path)}, {}, tmp_path), {"width": 4}, tmp_path)
    assert str(path) in str(e.value) and fix in str(e.value)


def test_wrong_format_key_names_the_file(tmp_path):
    import torch

    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "upop.pth")
    with pytest.raises(CheckpointError, match=r"upop.pth: expected the weights under 'model', found \['state_dict'\]"):
        load_state_dict(tmp_path / "upop.pth", key="model")
