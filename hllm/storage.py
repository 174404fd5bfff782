"""Local paths and s3:// URIs behind one small interface.

Readers and model loaders call `local_path(uri)`: a local path comes back as is; an
s3:// object or prefix is downloaded once into a content-addressed cache and the
local copy is returned. Endpoint, region and credentials come from the environment
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), never from code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hllm.errors import DataError


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise DataError(f"{uri}: not a valid s3:// URI (expected s3://bucket/key)")
    return bucket, key


def cache_root() -> Path:
    return Path(os.environ.get("HLLM_CACHE", Path.home() / ".cache" / "hllm"))


def s3_client():
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=5, read_timeout=60),
    )


def local_path(uri: str | os.PathLike) -> Path:
    """Return a local path for `uri`, downloading s3:// objects or prefixes first."""
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        return path
    return _download(str(uri))


def _download(uri: str) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri.rstrip("/"))
    target = cache_root() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16] / (Path(key).name or bucket)
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        objects = [obj for page in pages for obj in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"{uri}: cannot list bucket '{bucket}' prefix '{key}': {exc}") from exc
    if not objects:
        raise DataError(f"{uri}: no object or prefix '{key}' in bucket '{bucket}'")
    exact = [o for o in objects if o["Key"] == key]
    try:
        if exact:  # a single object
            if not target.exists() or target.stat().st_size != exact[0]["Size"]:
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(target))
            return target
        prefix = key.rstrip("/") + "/"
        for obj in objects:
            if not obj["Key"].startswith(prefix):
                continue
            dest = target / obj["Key"][len(prefix):]
            if dest.exists() and dest.stat().st_size == obj["Size"]:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest))
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"{uri}: download from bucket '{bucket}' failed: {exc}") from exc
    return target
