import json
import re

import pytest
import torch

from workers.checkpoints import CheckpointError, load_state_dict, resolve
from workers.models import MODELS, build_model
from workers.models.demo_cnn import DemoCNN

pytestmark = pytest.mark.unit


# Small canvases keep CPU time sane; CLIP's zero-shot head with one template instead of 80.
LIGHT_ARGS = {"clip_vit_b32": {"templates": "simple", "input_size": 32},
              "clip_vit_l14": {"templates": "simple", "input_size": 28},
              "clip_vit_l14_336": {"templates": "simple", "input_size": 28},
              "resnet18": {"input_size": 64}, "resnet34": {"input_size": 64}, "resnet50": {"input_size": 64},
              "deit_tiny": {"input_size": 64}}


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_frozen_and_runs(name, tmp_path):
    built, meta = build_model(name, "random", LIGHT_ARGS.get(name, {}), tmp_path)
    assert "random init" in built.weights_source and "not pre-trained" in built.weights_source
    assert not any(p.requires_grad for p in built.model.parameters()) and not built.model.training
    out = built.model(torch.zeros(2, 3, meta.input_size, meta.input_size))
    assert out.shape == (2, meta.num_classes)


def test_shipped_demo_weights_load_to_the_recorded_hash(tmp_path):
    """`pretrained` reads the file in the repository, whose sha256 is recorded beside it; a trained network."""
    from safetensors import safe_open

    from workers.checkpoints import sha256_file
    from workers.models.demo_cnn import SHIPPED, WEIGHTS_DIR

    path = WEIGHTS_DIR / SHIPPED["file"]
    assert sha256_file(path) == SHIPPED["sha256"] and path.stat().st_size < 1_000_000
    built, _ = build_model("demo_cnn", "pretrained", {}, tmp_path)
    assert SHIPPED["sha256"][:16] in built.weights_source and not list(tmp_path.iterdir())  # nothing trained or cached
    with safe_open(str(path), "pt") as f:
        for k, v in built.model.state_dict().items():
            assert torch.equal(v, f.get_tensor(k)), k
        header = f.metadata()
    assert json.loads(header["made_by"]) == SHIPPED["made_by"]
    assert float(header["source_accuracy"]) > 0.5  # well above chance (1/20) on its own source task


def test_shipped_demo_weights_missing_altered_or_other_args_are_clear_errors(tmp_path, monkeypatch):
    import shutil

    import workers.models.demo_cnn as demo
    from workers.models.demo_cnn import SHIPPED, WEIGHTS_DIR

    with pytest.raises(CheckpointError, match="ship for width=16, seed=0 only, not width=8.*vpgrid pretrain demo_cnn"):
        build_model("demo_cnn", "pretrained", {"width": 8}, tmp_path)
    monkeypatch.setattr(demo, "WEIGHTS_DIR", tmp_path / "w")
    with pytest.raises(CheckpointError, match="shipped weights .*demo_cnn.safetensors are missing"):
        build_model("demo_cnn", "pretrained", {}, tmp_path)
    (tmp_path / "w").mkdir()
    altered = tmp_path / "w" / SHIPPED["file"]
    shutil.copy(WEIGHTS_DIR / SHIPPED["file"], altered)
    with open(altered, "r+b") as f:  # one bit of the last tensor flipped: still a readable file
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(CheckpointError, match="shipped weights were altered .*sha256 mismatch"):
        build_model("demo_cnn", "pretrained", {}, tmp_path)


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_pretrain_command_writes_a_trained_network_that_loads(tmp_path):
    """A short pre-training (tiny epochs) through the CLI: a safetensors file, its sha256 printed, loadable by
    path, well above chance on shapes; its defaults are how the shipped file was made."""
    import inspect

    from typer.testing import CliRunner

    from orchestrator.cli import app, pretrain
    from workers.checkpoints import sha256_file
    from workers.models.demo_cnn import SHIPPED

    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(app, ["pretrain", "demo_cnn", "--out", str(out), "--width", "8", "--epochs", "3",
                                 "--images", "1500"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"{out} sha256:{sha256_file(out)}"
    assert float(re.search(r"([0-9.]+)% on the shapes test split", r.stderr).group(1)) > 15
    built, _ = build_model("demo_cnn", resolve({"path": str(out), "sha256": sha256_file(out)}, {}, tmp_path),
                           {"width": 8}, tmp_path)
    assert built.model.fc.weight.shape == (20, 32)
    defaults = {k: p.default for k, p in inspect.signature(pretrain).parameters.items() if k in SHIPPED["made_by"]}
    assert defaults == SHIPPED["made_by"]
    bad = CliRunner().invoke(app, ["pretrain", "demo_cnn", "--out", str(tmp_path / "w.pt")])
    assert bad.exit_code == 2 and "must end in .safetensors" in bad.output and not (tmp_path / "w.pt").exists()


def test_checkpoint_from_path_loads_strictly(tmp_path):
    good = DemoCNN(width=4)
    torch.save({"state_dict": good.state_dict()}, tmp_path / "ok.pt")
    built, _ = build_model("demo_cnn", resolve(str(tmp_path / "ok.pt"), {}, tmp_path), {"width": 4}, tmp_path)
    assert torch.equal(built.model.fc.weight, good.fc.weight)
    assert "sha256:" in built.weights_source

    sd = good.state_dict()
    sd["extra.weight"] = sd.pop("fc.weight")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing: fc.weight; unexpected: extra.weight"):
        build_model("demo_cnn", resolve(str(tmp_path / "bad.pt"), {}, tmp_path), {"width": 4}, tmp_path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc.weight: file \(20, 16\) vs model \(20, 32\)"):
        build_model("demo_cnn", resolve(str(tmp_path / "ok.pt"), {}, tmp_path), {"width": 8}, tmp_path)


def test_unsafe_and_missing_checkpoints_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_state_dict(tmp_path / "none.pt")


def test_unknown_model_and_args():
    from workers.core.registry import UnknownName

    with pytest.raises(UnknownName, match="did you mean 'demo_cnn'"):
        MODELS.entry("demo_cn")
    with pytest.raises(ValueError, match="demo_cnn'.*unknown arg 'depth'"):
        build_model("demo_cnn", "random", {"depth": 3}, ".")


def test_checkpoint_urls_are_fetched_once_and_verified(tmp_path):
    """A file:// URL takes the real download path: cached under downloads/, sha256-checked."""
    from workers.checkpoints import sha256_file

    src = tmp_path / "src.pt"
    torch.save(DemoCNN(width=4).state_dict(), src)
    digest = sha256_file(src)
    ck = resolve({"url": src.as_uri(), "sha256": digest}, {}, tmp_path / "cache")
    assert ck.files["weights"].parent == tmp_path / "cache" / "downloads" and digest[:16] in ck.source
    src.unlink()  # now only the cached copy exists: a second resolve must not download again
    assert resolve({"url": src.as_uri(), "sha256": digest[:8]}, {}, tmp_path / "cache").files == ck.files
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve({"path": str(ck.files["weights"]), "sha256": "0" * 64}, {}, tmp_path)
    with pytest.raises(CheckpointError, match="needs a sha256"):
        resolve({"url": "https://example.org/x.pt"}, {}, tmp_path)
    with pytest.raises(CheckpointError, match="unknown keys \\['sha'\\]"):
        resolve({"path": "x", "sha": "1"}, {}, tmp_path)


@pytest.mark.cluster
def test_s3_checkpoints_are_copied_once_into_the_node_cache_and_verified(tmp_path, s3_bucket):
    """An s3:// checkpoint on a real S3 API server: copied into the node-local cache, sha256-checked, loaded."""
    import boto3

    from workers.checkpoints import sha256_file

    src = tmp_path / "src.pt"
    model = DemoCNN(width=4)
    torch.save(model.state_dict(), src)
    digest = sha256_file(src)
    uri = f"{s3_bucket}/ckpt/w.pt"
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    boto3.client("s3").upload_file(str(src), bucket, key)
    ck = resolve({"url": uri, "sha256": digest}, {}, tmp_path / "cache")
    assert ck.files["weights"].parent == tmp_path / "cache" / "downloads" and digest[:16] in ck.source
    boto3.client("s3").delete_object(Bucket=bucket, Key=key)  # only the cached copy is left: no second copy
    assert resolve({"url": uri, "sha256": digest[:8]}, {}, tmp_path / "cache").files == ck.files
    built, _ = build_model("demo_cnn", ck, {"width": 4}, tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(built.model.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="needs a sha256"):
        resolve({"url": uri}, {}, tmp_path)
    with pytest.raises(CheckpointError, match="could not copy s3://.*/ckpt/gone.pt"):
        resolve({"url": f"{s3_bucket}/ckpt/gone.pt", "sha256": digest}, {}, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "downloads").iterdir()] == [ck.files["weights"].name]


def test_a_bad_download_is_not_kept(tmp_path):
    src = tmp_path / "src.pt"
    src.write_bytes(b"not what was promised")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve({"url": src.as_uri(), "sha256": "ab" * 32}, {}, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_checkpoint_paths_expand_environment_variables(tmp_path, monkeypatch):
    torch.save(DemoCNN(width=4).state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv("VPGRID_CKPT", str(tmp_path))
    assert resolve("$VPGRID_CKPT/w.pt", {}, tmp_path).files["weights"] == tmp_path / "w.pt"
    monkeypatch.delenv("VPGRID_CKPT")
    with pytest.raises(CheckpointError, match="an environment variable in it is not set"):
        resolve("$VPGRID_CKPT/w.pt", {}, tmp_path)


def test_demo_pretraining_is_reproducible_whatever_ran_before():
    """Two pre-trainings, with the global RNG in different states, give bit-identical weights."""
    from workers.models.demo_cnn import pretrain

    torch.manual_seed(123)
    a, _ = pretrain(width=4, epochs=1, images=200)
    torch.rand(1000)  # move the global stream
    b, _ = pretrain(width=4, epochs=1, images=200)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
