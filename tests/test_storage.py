"""s3:// datasets through boto3 against a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from hllm import storage
from hllm.config import DataConfig
from hllm.data.readers import read_dataset
from hllm.data.split import build_split
from hllm.errors import DataError


def test_s3_dataset_reads_like_the_local_one(toy_data, s3_env):
    client = storage.s3_client()
    client.create_bucket(Bucket="datasets")
    for path in toy_data.iterdir():
        client.upload_file(str(path), "datasets", f"recsys/toy/{path.name}")
    remote = build_split(read_dataset("s3://datasets/recsys/toy"), DataConfig())
    local = build_split(read_dataset(str(toy_data)), DataConfig())
    assert remote.fingerprint() == local.fingerprint()
    # A single object is fetched as a file.
    single = storage.local_path("s3://datasets/recsys/toy/toy.item")
    assert single.read_text() == (toy_data / "toy.item").read_text()


def test_cached_copy_follows_overwrites_and_deletes(s3_env):
    from hllm.lineage import data_sha256

    client = storage.s3_client()
    client.create_bucket(Bucket="changing")
    client.put_object(Bucket="changing", Key="d/a.txt", Body=b"aaaa")
    client.put_object(Bucket="changing", Key="d/b.txt", Body=b"keep")
    assert (storage.local_path("s3://changing/d") / "a.txt").read_bytes() == b"aaaa"
    before = data_sha256("s3://changing/d")
    # Other bytes of the same size, then an object deleted from the prefix.
    client.put_object(Bucket="changing", Key="d/a.txt", Body=b"bbbb")
    client.delete_object(Bucket="changing", Key="d/b.txt")
    local = storage.local_path("s3://changing/d")
    assert (local / "a.txt").read_bytes() == b"bbbb"
    assert sorted(p.name for p in local.iterdir()) == ["a.txt"]
    assert data_sha256("s3://changing/d") != before
    # A single object, overwritten with the same size.
    assert storage.local_path("s3://changing/d/a.txt").read_bytes() == b"bbbb"
    client.put_object(Bucket="changing", Key="d/a.txt", Body=b"cccc")
    assert storage.local_path("s3://changing/d/a.txt").read_bytes() == b"cccc"


def test_missing_s3_prefix_names_bucket_and_key(s3_env):
    client = storage.s3_client()
    client.create_bucket(Bucket="empty")
    with pytest.raises(DataError, match="no object or prefix 'nothing/here' in bucket 'empty'"):
        storage.local_path("s3://empty/nothing/here")


def test_directory_round_trip_through_s3_and_local(tmp_path, s3_env):
    storage.s3_client().create_bucket(Bucket="dirs")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    keys = storage.upload_dir(src, "s3://dirs/runs/r1")
    assert keys == ["s3://dirs/runs/r1/a.txt", "s3://dirs/runs/r1/sub/b.bin"]
    back = storage.download_dir("s3://dirs/runs/r1", tmp_path / "back")
    assert (back / "a.txt").read_text() == "alpha"
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert storage.exists("s3://dirs/runs/r1/a.txt")
    assert not storage.exists("s3://dirs/runs/r1/missing.txt")
    # The same calls work for plain local paths on either side.
    storage.upload_dir(src, str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "sub" / "b.bin").exists()
    one = storage.download(str(src / "a.txt"), tmp_path / "one" / "a.txt")
    assert one.read_text() == "alpha"


def test_large_file_goes_up_in_parts(tmp_path, s3_env):
    import hashlib

    storage.s3_client().create_bucket(Bucket="big")
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(11 * 1024 * 1024))
    storage.upload(blob, "s3://big/ckpt/weights.bin", storage.transfer_config(threshold_mb=5, chunk_mb=5))
    head = storage.s3_client().head_object(Bucket="big", Key="ckpt/weights.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    back = storage.download("s3://big/ckpt/weights.bin", tmp_path / "back.bin",
                            storage.transfer_config(threshold_mb=5, chunk_mb=5))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(blob.read_bytes()).digest()
    assert not list(tmp_path.glob("*.part"))


def test_missing_bucket_and_key_are_named(tmp_path, s3_env):
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        storage.download("s3://no-such-bucket/a/b.txt", tmp_path / "x")
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        storage.local_path("s3://no-such-bucket/prefix")
    storage.s3_client().create_bucket(Bucket="keys")
    with pytest.raises(DataError, match="no object 'a/missing.txt' in bucket 'keys'"):
        storage.download("s3://keys/a/missing.txt", tmp_path / "x")
    with pytest.raises(DataError, match="no objects under prefix 'nothing/' in bucket 'keys'"):
        storage.download_dir("s3://keys/nothing", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_access_denied_names_bucket_and_key(tmp_path, monkeypatch):
    from servers import s3_server_with_auth

    with s3_server_with_auth(tmp_path) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        src = tmp_path / "f.txt"
        src.write_text("x")
        with pytest.raises(DataError, match=r"access denied to bucket 'locked' key 'dir/f.txt'"):
            storage.upload(src, "s3://locked/dir/f.txt")
        with pytest.raises(DataError, match=r"access denied to bucket 'locked' key 'dir/g.txt'"):
            storage.download("s3://locked/dir/g.txt", tmp_path / "g.txt")


def test_unreachable_endpoint_fails_after_bounded_retries(tmp_path, monkeypatch):
    import time

    from servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("HLLM_S3_MAX_ATTEMPTS", "3")
    t0 = time.monotonic()
    with pytest.raises(DataError, match="bucket 'data' key 'x.csv'.*unreachable"):
        storage.download("s3://data/x.csv", tmp_path / "x.csv")
    assert time.monotonic() - t0 < 30


def test_transient_503s_are_retried_and_counted(tmp_path, s3_env, monkeypatch):
    from servers import FaultyProxy

    client = storage.s3_client()
    client.create_bucket(Bucket="flaky")
    client.put_object(Bucket="flaky", Key="d/x.bin", Body=b"payload" * 1000)
    # The first two requests through the proxy get 503 SlowDown; boto3's standard mode
    # retries (HLLM_S3_MAX_ATTEMPTS=4), so the download succeeds after them.
    with FaultyProxy(s3_env, lambda method, path, n: n < 2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("HLLM_S3_MAX_ATTEMPTS", "4")
        got = storage.download("s3://flaky/d/x.bin", tmp_path / "x.bin")
    assert got.read_bytes() == b"payload" * 1000
    assert proxy.failed == 2 and len(proxy.requests) >= 3
    # More failures than attempts: a named error, no file and no partial file.
    with FaultyProxy(s3_env, lambda method, path, n: True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("HLLM_S3_MAX_ATTEMPTS", "3")
        with pytest.raises(DataError, match="bucket 'flaky' key 'd/x.bin'"):
            storage.download("s3://flaky/d/x.bin", tmp_path / "y.bin")
    # Bounded: 3 attempts per call (4 requests were seen: boto3's HEAD and one more probe
    # of the transfer manager), not retries until a wall-clock timeout.
    assert proxy.failed == len(proxy.requests) and 3 <= len(proxy.requests) <= 6
    assert not (tmp_path / "y.bin").exists() and not (tmp_path / "y.bin.part").exists()


def test_multipart_upload_cut_midway_leaves_no_object_and_no_open_upload(tmp_path, s3_env,
                                                                         monkeypatch):
    from servers import FaultyProxy

    storage.s3_client().create_bucket(Bucket="cut")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # three 5 MB parts at a 5 MB threshold

    def cut_after_first_part(method, path, n):  # every part after the first is refused
        return method == "PUT" and "partNumber=" in path and "partNumber=1&" not in path + "&"

    with FaultyProxy(s3_env, cut_after_first_part) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("HLLM_S3_MAX_ATTEMPTS", "2")
        with pytest.raises(DataError, match="bucket 'cut' key 'runs/big.bin'"):
            storage.upload(big, "s3://cut/runs/big.bin", storage.transfer_config(5, 5))
    assert proxy.failed >= 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    client = storage.s3_client()
    assert "Contents" not in client.list_objects_v2(Bucket="cut")
    assert not client.list_multipart_uploads(Bucket="cut").get("Uploads")  # aborted, not left
