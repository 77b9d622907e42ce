import dataclasses
import os
import typing

import pandas as pd
import pyarrow as pa
import pytest

from orchestrator import store as store_mod
from orchestrator.store import SCHEMA, Store, StoreError, dedup
from workers.spec import RunResult, RunSpec


def result(seed=1, status="ok", finished=100.0, acc=0.5) -> RunResult:
    spec = RunSpec(model="demo_cnn", method="ilm", dataset="digits", shots=None if seed % 2 else 10, seed=seed)
    return RunResult.for_spec(spec, status, error=None if status == "ok" else "boom", accuracy=acc,
                              finished_at=finished, label_mapping=[3, 1, 2], per_class_accuracy=[0.5, None, 1.0])


@pytest.fixture
def st(tmp_path) -> Store:
    s = Store(tmp_path / "store")
    s.create("name: x\n")
    return s


def test_schema_follows_run_result():
    hints = typing.get_type_hints(RunResult)
    assert SCHEMA.names == [f.name for f in dataclasses.fields(RunResult)]
    assert SCHEMA.field("shots").type == pa.int64() and SCHEMA.field("accuracy").type == pa.float64()
    assert SCHEMA.field("label_mapping").type == pa.list_(pa.int64())
    assert hints["label_mapping"] == typing.Optional[list[int]]


def test_publish_roundtrip_with_pandas_and_duckdb(st):
    for seed in range(1, 5):
        st.publish(result(seed))
    df = pd.read_parquet(st.root)  # the metadata folder and temporaries are invisible to readers
    assert len(df) == 4 and set(df["seed"]) == {1, 2, 3, 4}
    assert df.loc[df["seed"] == 2, "shots"].iloc[0] == 10 and pd.isna(df.loc[df["seed"] == 1, "shots"].iloc[0])
    assert list(df["label_mapping"].iloc[0]) == [3, 1, 2]
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{st.runs_dir}/*.parquet')").fetchall()[0][0]
    assert n == 4


def test_publish_is_atomic(st, monkeypatch):
    seen = {}
    real_replace = os.replace

    def spy(src, dst):
        seen["final_absent_before"] = not os.path.exists(dst)
        seen["tmp_is_hidden"] = os.path.basename(src).startswith(".")
        seen["tmp_complete"] = len(pd.read_parquet(src)) == 1
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", spy)
    path = st.publish(result())
    assert seen == {"final_absent_before": True, "tmp_is_hidden": True, "tmp_complete": True}
    assert path.name == f"{result().run_key}.parquet"


def test_failed_write_leaves_nothing(st, monkeypatch):
    def broken(table, where, **kw):
        open(where, "wb").write(b"PAR1 torn")
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        st.publish(result())
    assert list(st.runs_dir.iterdir()) == []


def test_publish_rejects_wrong_columns(st):
    row = result().to_row()
    row["extra"] = 1
    with pytest.raises(StoreError, match="extra"):
        st.publish(row)


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
    st.publish(result(3, "failed", 1.0))  # same key as an ok row: overwrites that file (same name)
    before = st.frame()
    assert st.compact() == (20, 1)
    after = st.frame()
    pd.testing.assert_frame_equal(before.sort_values("run_key").reset_index(drop=True),
                                  after.sort_values("run_key").reset_index(drop=True))
    st.publish(result(21))  # publishing after compaction adds a file; readers see both
    assert len(st.frame()) == 21 and len(st._files()) == 2
    assert st.statuses()[result(3).run_key] == "failed"


def test_statuses_ok_wins(st):
    st.publish(result(1, "failed", 1.0))
    st.compact()
    st.publish(result(1, "ok", 2.0))
    assert st.statuses() == {result(1).run_key: "ok"}


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a vpgrid store"):
        Store(tmp_path).grid_text()


def test_status_of_reads_only_the_runs_own_file(st):
    assert st.status_of(result(1).run_key) is None
    st.publish(result(1, "failed"))
    assert st.status_of(result(1).run_key) == "failed"
    st.publish(result(1, "ok"))
    assert st.status_of(result(1).run_key) == "ok"
    st.publish(result(2))
    assert st.compact() == (2, 1)  # now only in a part file: the driver's pending list already accounts for it
    assert st.status_of(result(1).run_key) is None
