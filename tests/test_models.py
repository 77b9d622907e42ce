import pytest
import torch

from workers.checkpoints import CheckpointError, load_state_dict, resolve
from workers.models import MODELS, build_model
from workers.models.demo_cnn import DemoCNN


# Small canvases keep CPU time sane; CLIP's zero-shot head with one template instead of 80.
LIGHT_ARGS = {"clip_vit_b32": {"templates": "simple", "input_size": 32},
              "clip_vit_l14": {"templates": "simple", "input_size": 28},
              "clip_vit_l14_336": {"templates": "simple", "input_size": 28},
              "resnet18": {"input_size": 64}, "resnet34": {"input_size": 64}, "resnet50": {"input_size": 64},
              "deit_tiny": {"input_size": 64}}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_frozen_and_runs(name, tmp_path):
    built, meta = build_model(name, "random", LIGHT_ARGS.get(name, {}), tmp_path)
    assert "random init" in built.weights_source and "not pre-trained" in built.weights_source
    assert not any(p.requires_grad for p in built.model.parameters()) and not built.model.training
    out = built.model(torch.zeros(2, 3, meta.input_size, meta.input_size))
    assert out.shape == (2, meta.num_classes)


def test_pretrained_demo_model_is_trained_once_and_cached(tmp_path):
    args = {"width": 8, "pretrain_epochs": 3, "pretrain_images": 1500}
    a, _ = build_model("demo_cnn", "pretrained", args, tmp_path)
    files = list(tmp_path.glob("demo_cnn-*.pt"))
    assert len(files) == 1 and "sha256:" in a.weights_source
    mtime = files[0].stat().st_mtime_ns
    b, _ = build_model("demo_cnn", "pretrained", args, tmp_path)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not trained again
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # and it learned something: well above chance (1/20) on its own source task
    assert torch.load(files[0], weights_only=True)["source_accuracy"] > 0.15


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
    from workers.registry import UnknownName

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


def test_demo_pretraining_is_reproducible_whatever_ran_before(tmp_path):
    """Two fresh caches, with the global RNG in different states, give bit-identical pretrained weights."""
    args = {"width": 4, "pretrain_epochs": 1, "pretrain_images": 200}
    torch.manual_seed(123)
    a, _ = build_model("demo_cnn", "pretrained", args, tmp_path / "a")
    torch.rand(1000)  # move the global stream
    b, _ = build_model("demo_cnn", "pretrained", args, tmp_path / "b")
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(v, w), k
