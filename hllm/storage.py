"""Local paths and s3:// URIs behind one small interface.

Readers and model loaders call `local_path(uri)`: a local path comes back as is; an
s3:// object or prefix is downloaded once into a content-addressed cache and the
local copy is returned. Writers call `upload` / `download` / `upload_dir` /
`download_dir`, which accept either kind of location on either side.

Endpoint, region and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID, ...), never from code. Every call goes through one
boto3 client with bounded retries (exponential backoff, HLLM_S3_MAX_ATTEMPTS) and
large files go up and down in parts (HLLM_S3_MULTIPART_MB), so a flaky network or a
multi-GB checkpoint does not need special handling by callers. S3 failures become
`DataError`s that name the bucket and key and say what to check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from hllm.errors import DataError

MB = 1024 * 1024


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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DataError(f"environment variable {name}={value!r} is not an integer") from None


def s3_client():
    """One S3 client configured from the environment, with bounded retries and timeouts."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        config=BotoConfig(retries={"max_attempts": _env_int("HLLM_S3_MAX_ATTEMPTS", 5),
                                   "mode": "standard"},  # exponential backoff with jitter
                          connect_timeout=_env_int("HLLM_S3_CONNECT_TIMEOUT", 5),
                          read_timeout=_env_int("HLLM_S3_READ_TIMEOUT", 60)),
    )


def transfer_config(threshold_mb: int | None = None, chunk_mb: int | None = None):
    """Multipart above `threshold_mb` (S3 needs parts of at least 5 MB, except the last)."""
    from boto3.s3.transfer import TransferConfig

    threshold = threshold_mb if threshold_mb is not None else _env_int("HLLM_S3_MULTIPART_MB", 64)
    chunk = chunk_mb if chunk_mb is not None else _env_int("HLLM_S3_CHUNK_MB", max(5, threshold // 4 or 5))
    return TransferConfig(multipart_threshold=threshold * MB, multipart_chunksize=max(5, chunk) * MB,
                          max_concurrency=4, use_threads=True)


def s3_error(exc: Exception, uri: str, action: str) -> DataError:
    """A DataError naming bucket and key, with the likely cause spelled out."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    bucket, key = split_s3(uri)
    where = f"bucket '{bucket}' key '{key}'"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NotFound") and not _bucket_exists(bucket):
            code = "NoSuchBucket"  # HEAD answers have no body: ask about the bucket itself
        if code == "NoSuchBucket":
            return DataError(f"{uri}: cannot {action}: bucket '{bucket}' does not exist")
        if code in ("NoSuchKey", "404", "NotFound"):
            return DataError(f"{uri}: cannot {action}: no object '{key}' in bucket '{bucket}'")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch") or status == 403:
            return DataError(f"{uri}: cannot {action}: access denied to {where} ({code}); check "
                             "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")
        return DataError(f"{uri}: cannot {action} ({where}): {code or status}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return DataError(f"{uri}: cannot {action}: no AWS credentials in the environment "
                         "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, EndpointConnectionError):
        return DataError(f"{uri}: cannot {action} ({where}): endpoint unreachable after retries: {exc}")
    return DataError(f"{uri}: cannot {action} ({where}): {exc}")


def _bucket_exists(bucket: str) -> bool:
    """False only when the bucket is known to be missing (errors of the check are ignored)."""
    from botocore.exceptions import ClientError

    try:
        s3_client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")
    except Exception:  # noqa: BLE001 - a failed check must not hide the original error
        return True
    return True


def _boto_errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, S3UploadFailedError)


def _unwrap(exc: Exception) -> Exception:
    """boto3's upload wraps the ClientError in S3UploadFailedError; use the inner one."""
    cause = exc.__cause__ or exc.__context__
    from botocore.exceptions import ClientError

    return cause if isinstance(cause, ClientError) else exc


def local_path(uri: str | os.PathLike) -> Path:
    """Return a local path for `uri`, downloading s3:// objects or prefixes first."""
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        return path
    return _download(str(uri))


def list_objects(uri: str) -> list[dict[str, Any]]:
    """Objects under an s3:// prefix (Key, Size, ...); raises naming the bucket on failure."""
    bucket, key = split_s3(uri)
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        return [obj for page in pages for obj in page.get("Contents", [])]
    except _boto_errors() as exc:
        raise s3_error(exc, uri, f"list prefix '{key}'") from exc


def exists(uri: str | os.PathLike) -> bool:
    """True when a local path or an s3:// object exists."""
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(str(uri))
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise s3_error(exc, str(uri), "check object") from exc
    except _boto_errors() as exc:
        raise s3_error(exc, str(uri), "check object") from exc


def upload(src: str | os.PathLike, dest: str, config=None) -> str:
    """Copy one local file to `dest` (s3:// or local path); multipart when large."""
    src = Path(src)
    if not src.is_file():
        raise DataError(f"{src}: no such file to upload")
    if not is_s3(dest):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return str(dest)
    bucket, key = split_s3(dest)
    if not key or key.endswith("/"):
        key += src.name
        dest = f"s3://{bucket}/{key}"
    try:
        s3_client().upload_file(str(src), bucket, key, Config=config or transfer_config())
    except _boto_errors() as exc:
        raise s3_error(_unwrap(exc), dest, f"upload {src}") from exc
    return dest


def download(src: str, dest: str | os.PathLike, config=None) -> Path:
    """Copy one object (s3:// or local file) to a local file, written atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if not is_s3(src):
        if not Path(src).is_file():
            raise DataError(f"{src}: no such file")
        shutil.copyfile(src, tmp)
    else:
        bucket, key = split_s3(src)
        try:
            s3_client().download_file(bucket, key, str(tmp), Config=config or transfer_config())
        except _boto_errors() as exc:
            tmp.unlink(missing_ok=True)
            raise s3_error(exc, src, "download") from exc
    tmp.replace(dest)
    return dest


def upload_dir(src: str | os.PathLike, dest: str, config=None) -> list[str]:
    """Copy every file under a local directory to the prefix `dest`; returns the targets."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: no such directory to upload")
    if not is_s3(dest):
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return sorted(str(Path(dest) / p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    prefix = dest.rstrip("/")
    return [upload(path, f"{prefix}/{path.relative_to(src).as_posix()}", config)
            for path in sorted(src.rglob("*")) if path.is_file()]


def download_dir(src: str, dest: str | os.PathLike, config=None) -> Path:
    """Copy every object under the prefix `src` (s3:// or local dir) into `dest`."""
    dest = Path(dest)
    if not is_s3(src):
        if not Path(src).is_dir():
            raise DataError(f"{src}: no such directory")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest
    bucket, key = split_s3(src.rstrip("/"))
    prefix = key + "/" if key else ""
    objects = [o for o in list_objects(f"s3://{bucket}/{prefix}") if not o["Key"].endswith("/")]
    if not objects:
        raise DataError(f"{src}: no objects under prefix '{prefix}' in bucket '{bucket}'")
    for obj in objects:
        download(f"s3://{bucket}/{obj['Key']}", dest / obj["Key"][len(prefix):], config)
    return dest


def _download(uri: str) -> Path:
    """Fetch an object or a prefix into the cache, keeping only what S3 still holds unchanged.

    A local copy is reused when its object's ETag is the one recorded when it was fetched
    (size alone misses an overwrite with other bytes of the same length); files whose
    objects are gone from the prefix are deleted, so the copy is the listing, byte for byte.
    The ETag record is written after the files: a crash in between re-fetches them.
    """
    bucket, key = split_s3(uri.rstrip("/"))
    root = cache_root() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = root / (Path(key).name or bucket)
    objects = list_objects(f"s3://{bucket}/{key}")
    if not objects:
        raise DataError(f"{uri}: no object or prefix '{key}' in bucket '{bucket}'")
    exact = [o for o in objects if o["Key"] == key]
    prefix = key.rstrip("/") + "/"
    if exact:  # a single object
        wanted = {"": (key, exact[0].get("ETag", ""))}
    else:
        wanted = {o["Key"][len(prefix):]: (o["Key"], o.get("ETag", "")) for o in objects
                  if o["Key"].startswith(prefix) and not o["Key"].endswith("/")}
    record = root / "etags.json"
    fetched = json.loads(record.read_text()) if record.is_file() else {}
    if not exact and target.is_dir():
        for path in [p for p in target.rglob("*") if p.is_file()]:
            if path.relative_to(target).as_posix() not in wanted:
                path.unlink()  # deleted from the prefix since the last fetch
    for rel, (obj_key, etag) in wanted.items():
        dest = target / rel if rel else target
        if etag and fetched.get(rel) == etag and dest.is_file():
            continue
        download(f"s3://{bucket}/{obj_key}", dest)
    staged = record.with_name(record.name + ".part")
    staged.write_text(json.dumps({rel: etag for rel, (_, etag) in wanted.items()}, indent=1))
    staged.replace(record)
    return target
