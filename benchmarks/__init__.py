"""Benchmarks: what measures vpgrid rather than runs it. The numbers go to docs/benchmarks.md (the data files are
benchmarks/results/*.csv); tests never assert a time.

- orchestration.py: plan, store, status, status_s3, launch, cluster, report (the control plane and the report);
- scale.py: the paper grid rehearsed on a local multi-node cluster with an S3 server (docs/scale.md);
- models.py: loop (a) and protocol (c); batching.py: prompt batching (b), in the data plane;
- common.py: what they share (the paper grid, best-of timings, a command's wall time, an S3 server).

`vpgrid bench NAME` finds them through the entry points of group "vpgrid.bench" in pyproject.toml: this package
imports orchestrator and workers, and neither of them imports it. `vpgrid bench train` and `vpgrid bench gpu` are
the product's own (workers/bench.py, workers/gpu_check.py): they write the throughput tables `plan --estimate`
reads.
"""
