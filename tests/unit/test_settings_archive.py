"""The archive's settings: one nested group (HEALMESH_ARCHIVE__<FIELD>), a folder under home by
default, and the label limit that follows the archive's retention."""

from __future__ import annotations

from healmesh.settings import Settings


def test_the_default_archive_is_a_folder_under_home_and_labels_count_from_its_retention(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALMESH_HOME", str(tmp_path))
    s = Settings()
    assert s.archive_url == (tmp_path / "archive").as_uri()
    assert s.archive.retention_s == 30 * 86_400 and s.label_limit_s == 30 * 86_400
    monkeypatch.setenv("HEALMESH_ARCHIVE__ENABLED", "false")
    assert Settings().label_limit_s == Settings().label_retention_s


def test_the_group_is_set_from_the_environment_and_the_secret_is_not_shown(monkeypatch):
    monkeypatch.setenv("HEALMESH_ARCHIVE__URL", "s3://bucket/healmesh")
    monkeypatch.setenv("HEALMESH_ARCHIVE__ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("HEALMESH_ARCHIVE__SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("HEALMESH_ARCHIVE__RETENTION_S", "86400")
    s = Settings()
    assert s.archive_url == "s3://bucket/healmesh" and s.archive.endpoint_url == "http://127.0.0.1:9000"
    assert s.archive.retention_s == 86_400
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())
    assert s.archive.secret_access_key is not None and s.archive.secret_access_key.get_secret_value() == "very-secret"
