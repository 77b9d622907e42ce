import dataclasses
import os
import threading
import typing
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.core import store as store_mod
from workers.core.store import SCHEMA, Store, StoreError, dedup
from workers.core.spec import RunResult, RunSpec

pytestmark = pytest.mark.unit


def result(seed=1, status="ok", finished=100.0, acc=0.5) -> RunResult:
    spec = RunSpec(model="demo_cnn", method="ilm", dataset="digits", shots=None if seed % 2 else 10, seed=seed)
    return RunResult.for_spec(spec, status, error=None if status == "ok" else "boom", accuracy=acc,
                              finished_at=finished, label_mapping=[3, 1, 2], per_class_accuracy=[0.5, None, 1.0])


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.cluster)])
def st(request, tmp_path) -> Store:
    """The same store code on a local folder and on a real S3 API server."""
    root = tmp_path / "store" if request.param == "local" else request.getfixturevalue("s3_bucket") + "/pre/store"
    s = Store(root)
    s.create("name: x\n")
    return s


@pytest.fixture
def local(tmp_path) -> Store:
    s = Store(tmp_path / "store")
    s.create("name: x\n")
    return s


def names(st: Store) -> list[str]:
    return sorted(i.base_name for i in st._files())


def test_schema_follows_run_result():
    hints = typing.get_type_hints(RunResult)
    assert SCHEMA.names == [f.name for f in dataclasses.fields(RunResult)]
    assert SCHEMA.field("shots").type == pa.int64() and SCHEMA.field("accuracy").type == pa.float64()
    assert SCHEMA.field("label_mapping").type == pa.list_(pa.int64())
    assert hints["label_mapping"] == typing.Optional[list[int]]


def test_publish_roundtrip_with_pandas_and_duckdb(local):
    for seed in range(1, 5):
        local.publish(result(seed))
    df = pd.read_parquet(local.root)  # the metadata folder and temporaries are invisible to readers
    assert len(df) == 4 and set(df["seed"]) == {1, 2, 3, 4}
    assert df.loc[df["seed"] == 2, "shots"].iloc[0] == 10 and pd.isna(df.loc[df["seed"] == 1, "shots"].iloc[0])
    assert list(df["label_mapping"].iloc[0]) == [3, 1, 2]
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{local.runs_dir}/*.parquet')").fetchall()[0][0]
    assert n == 4


def test_roundtrip_on_either_filesystem(st):
    for seed in range(1, 5):
        st.publish(result(seed, "failed" if seed == 4 else "ok"))
    assert names(st) == sorted(f"{result(s).run_key}.{'failed' if s == 4 else 'ok'}.parquet" for s in range(1, 5))
    df = st.frame()
    assert sorted(df["seed"]) == [1, 2, 3, 4] and list(df["label_mapping"].iloc[0]) == [3, 1, 2]
    assert st.statuses() == {result(s).run_key: "failed" if s == 4 else "ok" for s in range(1, 5)}
    assert st.grid_text() == "name: x\n"


@pytest.mark.cluster
def test_s3_store_is_read_by_pandas(s3_bucket):
    st = Store(s3_bucket + "/p")
    st.create("name: x\n")
    st.publish(result(1))
    st.publish(result(2))
    st.compact()
    df = pd.read_parquet(st._base, filesystem=st.fs)  # the bucket's folder, as any pyarrow reader sees it
    assert sorted(df["seed"]) == [1, 2]


@pytest.mark.cluster
def test_a_row_and_a_heartbeat_on_s3_are_each_one_put(s3_bucket):
    """A small object is one PutObject, not a multipart upload (3 requests): the server says which by the ETag,
    a multipart object's ends in -<parts>. At 12k runs a row and a heartbeat a run, that is most of the traffic."""
    import boto3

    st = Store(s3_bucket + "/p")
    st.create("name: x\n")
    path = st.publish(result(1))
    st.heartbeat("t1", {"node": "n"})
    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    keys = [path.removeprefix(f"{bucket}/"), "p/_vpgrid/running/t1.json", "p/_vpgrid/grid.yaml"]
    etags = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in keys}
    assert all("-" not in e for e in etags.values()), etags


def test_publish_is_atomic(local, monkeypatch):
    seen = {}
    real_replace = os.replace

    def spy(src, dst):
        seen["final_absent_before"] = not os.path.exists(dst)
        seen["tmp_is_hidden"] = os.path.basename(src).startswith(".")
        seen["tmp_complete"] = len(pd.read_parquet(src)) == 1
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", spy)
    path = local.publish(result())
    assert seen == {"final_absent_before": True, "tmp_is_hidden": True, "tmp_complete": True}
    assert Path(path).name == f"{result().run_key}.ok.parquet"


def test_failed_write_leaves_nothing(local, monkeypatch):
    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        local.publish(result())
    assert os.listdir(local.runs_dir) == []


def test_publish_rejects_wrong_columns(local):
    row = result().to_row()
    row["extra"] = 1
    with pytest.raises(StoreError, match="extra"):
        local.publish(row)


def test_dedup_prefers_ok_then_latest():
    rows = [result(1, "failed", 300.0), result(1, "ok", 100.0, acc=0.1), result(1, "ok", 200.0, acc=0.2),
            result(2, "failed", 50.0), result(2, "failed", 60.0)]
    t = dedup(pa.Table.from_pylist([r.to_row() for r in rows], schema=SCHEMA)).to_pandas()
    assert len(t) == 2
    one = t[t["seed"] == 1].iloc[0]
    assert (one["status"], one["accuracy"]) == ("ok", 0.2)
    assert t[t["seed"] == 2].iloc[0]["finished_at"] == 60.0


def test_compact_keeps_rows_and_merges_files(st):
    for seed in range(1, 21):
        st.publish(result(seed))
    st.publish(result(3, "failed", 1.0))  # a failed row beside an ok one for the same run: ok wins
    before = st.frame()
    assert st.compact() == (21, 1)
    after = st.frame()
    pd.testing.assert_frame_equal(before.sort_values("run_key").reset_index(drop=True),
                                  after.sort_values("run_key").reset_index(drop=True))
    assert len(pq.read_metadata(st._files()[0].path, filesystem=st.fs).to_dict()["row_groups"]) == 1
    st.publish(result(21))  # publishing after compaction adds a file; readers see both
    assert len(st.frame()) == 21 and len(st._files()) == 2
    assert st.statuses()[result(3).run_key] == "ok"


def test_statuses_ok_wins(st):
    st.publish(result(1, "failed", 1.0))
    st.compact()
    st.publish(result(1, "ok", 2.0))
    assert st.statuses() == {result(1).run_key: "ok"}
    st.compact()
    st.publish(result(1, "failed", 3.0))
    assert st.statuses() == {result(1).run_key: "ok"}


def test_one_row_files_are_known_by_name_without_being_opened(local):
    """Status at scale lists the folder: a one-row file is never opened for its status, but a reader of rows
    that meets a torn file is told which file and what to do."""
    local.publish(result(1))
    path = local.publish(result(2, "failed"))
    Path(path).write_bytes(b"PAR1 torn")
    assert local.statuses() == {result(1).run_key: "ok", result(2).run_key: "failed"}
    with pytest.raises(StoreError, match=rf"{Path(path).name} is not a readable Parquet file.*vpgrid resume"):
        local.frame()


def test_files_of_older_stores_are_read(local):
    """Stores written before status-in-the-name kept one row per `<run_key>.parquet`: still counted."""
    pq.write_table(pa.Table.from_pylist([result(1, "failed").to_row()], schema=SCHEMA),
                   f"{local.runs_dir}/{result(1).run_key}.parquet")
    assert local.statuses() == {result(1).run_key: "failed"}
    local.publish(result(1, "ok"))
    assert local.statuses() == {result(1).run_key: "ok"}
    assert local.compact() == (2, 1) and local.frame()["status"].tolist() == ["ok"]


@pytest.mark.integration  # seconds to tens of seconds: a full-size model, training or rendering
def test_readers_meanwhile_compaction_see_every_row(local):
    """A reader lists, then reads; compaction may delete what it listed in between: no row is ever missing."""
    for seed in range(1, 41):
        local.publish(result(seed))
    errors, stop = [], threading.Event()

    def compact_often():
        while not stop.is_set():
            try:
                local.compact()
                local.publish(result(41 + len(errors)))  # keep something to merge
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    t = threading.Thread(target=compact_often)
    t.start()
    try:
        for _ in range(30):
            keys = set(local.statuses())
            assert {result(s).run_key for s in range(1, 41)} <= keys
            assert len(local.frame()) >= 40
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a vpgrid store"):
        Store(tmp_path).grid_text()


@pytest.mark.parametrize("uri, match", [
    ("s4://bucket/x", r"unknown scheme 's4://'; use a local path, file://, s3:// or gs://"),
    ("s3://", r"no bucket"),
])
def test_malformed_uri(uri, match):
    with pytest.raises(StoreError, match=match):
        Store(uri)


@pytest.mark.cluster
def test_missing_bucket_is_one_clear_error_and_writes_nothing(s3_server):
    st = Store("s3://no-such-bucket-here/x")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        st.create("name: x\n")


def test_heartbeats_and_launch_info(st):
    assert st.launch_info() == {} and st.heartbeats() == []
    st.write_launch({"launch_id": "a", "started": 1.0})
    st.heartbeat("t1", {"runs_done": 1})
    st.heartbeat("t2", {"runs_done": 2})
    assert st.launch_info() == {"launch_id": "a", "started": 1.0}
    assert [h["runs_done"] for h in st.heartbeats()] == [1, 2]
    st.end_heartbeat("t1")
    assert [h["trial"] for h in st.heartbeats()] == ["t2"]
    st.clear_heartbeats()
    assert st.heartbeats() == []


def _prompt() -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {"prompt": torch.randn(3, 8, 8, generator=g), "embedding.weight": torch.randn(5, 12, generator=g).half()}


def test_put_prompt_roundtrip_beside_the_rows(local):
    import torch

    from workers.prompts import prompt_file, read_prompt_file

    key = result().run_key
    path = local.put_prompt(key, prompt_file(_prompt()))
    assert Path(path) == Path(local.root) / "_prompts" / f"{key}.safetensors"
    back = read_prompt_file(Path(path).read_bytes())
    assert back.keys() == _prompt().keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in _prompt().items())
    local.publish(result())
    assert len(pd.read_parquet(local.root)) == 1  # readers of the store's Parquet do not trip on the prompts


def test_worker_publishes_prompt_and_row_on_either_filesystem(st):
    """On S3 too: the row's prompt_path is a location any node can open, and the object holds the prompt."""
    import torch

    from workers.prompts import read_prompt_file
    from workers.trial import publish
    from workers.core.uri import open_uri

    row = result()
    row.prompt = _prompt()
    publish(st, row)
    (stored,) = st.frame()["prompt_path"]
    fs, path, _ = open_uri(stored)
    assert path.endswith(f"/_prompts/{row.run_key}.safetensors")
    with fs.open_input_stream(path) as f:
        back = read_prompt_file(f.read())
    assert all(torch.equal(back[k], v) for k, v in _prompt().items())
    assert len(st.frame()) == 1  # the _prompts folder is not read as rows


def test_put_prompt_is_atomic(local, monkeypatch):
    from workers.prompts import prompt_file, read_prompt_file

    data, seen = prompt_file(_prompt()), {}
    real_replace = os.replace

    def spy(src, dst):
        seen["final_absent_before"] = not os.path.exists(dst)
        seen["tmp_is_hidden_beside_it"] = os.path.basename(src).startswith(".") and Path(src).parent == Path(dst).parent
        seen["tmp_complete"] = Path(src).read_bytes() == data and len(read_prompt_file(data)) == 2
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", spy)
    local.put_prompt(result().run_key, data)
    assert seen == {"final_absent_before": True, "tmp_is_hidden_beside_it": True, "tmp_complete": True}

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        local.put_prompt(result(2).run_key, data)
    assert os.listdir(Path(local.root) / "_prompts") == [f"{result().run_key}.safetensors"]


def test_the_worker_publishes_the_prompt_then_the_row_that_names_it(local):
    import torch

    from workers.prompts import read_prompt_file
    from workers.trial import publish

    row = result()
    row.prompt = _prompt()  # as workers.run.run returns a VP run's row
    publish(local, row)
    (stored,) = local.frame()["prompt_path"]
    assert stored == str(Path(local.root) / "_prompts" / f"{row.run_key}.safetensors")
    assert torch.equal(read_prompt_file(Path(stored).read_bytes())["prompt"], _prompt()["prompt"])
    publish(local, result(3))  # no prompt (LP, FF, a failed run): no file, a null path
    assert local.frame().set_index("seed")["prompt_path"].isna().to_dict() == {1: False, 3: True}
    assert os.listdir(Path(local.root) / "_prompts") == [f"{row.run_key}.safetensors"]


def test_compaction_racing_publishers_loses_no_row(local):
    """Trials publish while the driver compacts, as at cluster scale: every row published is in the store once."""
    stop, errors = threading.Event(), []

    def publish(first: int) -> None:
        for seed in range(first, first + 60):
            local.publish(result(seed))

    def compact() -> None:
        while not stop.is_set():
            try:
                local.compact()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    c = threading.Thread(target=compact)
    c.start()
    writers = [threading.Thread(target=publish, args=(1 + 60 * i,)) for i in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    c.join()
    assert errors == []
    local.compact()
    df = local.frame()
    assert sorted(df["seed"]) == list(range(1, 181)) and len(local._files()) == 1


def test_compaction_keeps_the_newer_failed_row_of_a_run(local):
    local.publish(result(1, "failed", 3.0))
    local.compact()
    local.publish(result(1, "failed", 5.0))  # a retried run failed again: its newer row wins
    local.compact()
    assert local.frame()["finished_at"].tolist() == [5.0]
