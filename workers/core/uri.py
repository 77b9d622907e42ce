"""Local paths and object-store URIs (file://, s3://, gs://) as one pyarrow filesystem API.

No torch, no Ray: the store (control plane) and the checkpoint fetcher (data plane) share it.
S3 takes the standard variables: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import pyarrow.fs as pafs

from workers.core.errors import VpgridError

SCHEMES = ("file", "s3", "gs")


class URIError(VpgridError, ValueError):
    """A location that no filesystem here can open; the message says what is valid."""


def is_remote(location: Union[str, Path]) -> bool:
    return str(location).split("://", 1)[0].lower() in ("s3", "gs", "gcs") if "://" in str(location) else False


def open_uri(location: Union[str, Path]) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, canonical URI or absolute local path) for a path or URI."""
    text = str(location)
    if "://" not in text:
        path = str(Path(text).expanduser().resolve())
        return pafs.LocalFileSystem(), path, path
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):  # file://results/x would silently become this machine's ./results/x
            raise URIError(f"{text}: a file:// URI needs an absolute path (file:///abs/path); "
                           f"for a path relative to here, give it without file://")
        path = str(Path(rest).resolve())
        return pafs.LocalFileSystem(), path, path
    rest = rest.strip("/")
    if not rest:
        raise URIError(f"{text}: no bucket in the URI (expected {scheme}://BUCKET/PREFIX)")
    if scheme == "s3":
        # Bounded timeouts and retries: an unreachable endpoint must end in an error, not a hang. A delayed open
        # makes a small object (a row, a heartbeat) one PutObject instead of a 3-request multipart upload; a
        # failure then surfaces at write or close, where every writer of the store already handles it.
        fs = pafs.S3FileSystem(endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
                               region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
                               connect_timeout=5, request_timeout=60, allow_delayed_open=True,
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
        return fs, rest, f"s3://{rest}"
    if scheme in ("gs", "gcs"):
        fs, path = pafs.FileSystem.from_uri(f"gs://{rest}")
        return fs, path, f"gs://{rest}"
    raise URIError(f"{text}: unknown scheme {scheme + '://'!r}; use a local path, file://, s3:// or gs://")


def bucket_missing(fs: pafs.FileSystem, path: str) -> bool:
    """True when `path` is on an object store whose bucket does not exist (or these credentials cannot see)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return False
    return fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound
