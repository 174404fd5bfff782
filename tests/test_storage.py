"""s3:// datasets through boto3 against a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

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


def test_missing_s3_prefix_names_bucket_and_key(s3_env):
    client = storage.s3_client()
    client.create_bucket(Bucket="empty")
    with pytest.raises(DataError, match="no object or prefix 'nothing/here' in bucket 'empty'"):
        storage.local_path("s3://empty/nothing/here")
