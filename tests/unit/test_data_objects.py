"""The local object store (the default profile's archive): atomic puts, prefix listing without
temporary files, keys that cannot leave the root, URLs. The S3 store runs against a moto server
in tests/integration/test_archive.py."""

from __future__ import annotations

import os

import pytest

from healmesh.data.objects import TEMP_PREFIX, LocalObjectStore, open_store


def test_put_get_list_delete(tmp_path):
    store = LocalObjectStore(tmp_path / "archive")
    store.put("features/dt=2026-12-02/hour=10/part-b.parquet", b"bb")
    store.put("features/dt=2026-12-02/hour=10/part-a.parquet", b"a")
    store.put("labels/dt=2026-12-02/hour=10/part-a.parquet", b"l")
    assert store.get("features/dt=2026-12-02/hour=10/part-b.parquet") == b"bb"
    assert store.list("features/") == ["features/dt=2026-12-02/hour=10/part-a.parquet",
                                       "features/dt=2026-12-02/hour=10/part-b.parquet"]
    assert store.list("features/dt=2026-12-01/") == [] and store.list("nothing/") == []
    assert store.delete_prefix("features/dt=2026-12-02/") == 2
    assert store.list("") == ["labels/dt=2026-12-02/hour=10/part-a.parquet"]


def test_a_put_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put("x/one", b"first")
    store.put("x/one", b"second")
    assert store.get("x/one") == b"second"
    assert os.listdir(tmp_path / "x") == ["one"]


def test_a_temporary_file_a_crash_left_is_not_listed(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put("x/part-1", b"1")
    (tmp_path / "x" / f"{TEMP_PREFIX}dead-part-2").write_bytes(b"half")
    assert store.list("x/") == ["x/part-1"]


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../up", "a/../../b", "a//b"])
def test_a_key_cannot_leave_the_root(tmp_path, key):
    with pytest.raises(ValueError, match="relative path"):
        LocalObjectStore(tmp_path).put(key, b"x")


def test_urls(tmp_path):
    assert isinstance(open_store(tmp_path.as_uri()), LocalObjectStore)
    s3 = open_store("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1", access_key_id="AKIA",
                    secret_access_key="very-secret")
    assert s3.url == "s3://bucket/some/prefix" and "very-secret" not in repr(vars(s3))
    with pytest.raises(ValueError, match="file:///"):
        open_store("ftp://x/y")
    with pytest.raises(ValueError, match="needs a bucket"):
        open_store("s3:///prefix")
