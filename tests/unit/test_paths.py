"""service.paths.sql_dir: the SQL files beside the code (a wheel) or at the
repository root (an editable install), and a clear error when neither has them."""

from __future__ import annotations

import pytest

from service import paths


def test_an_editable_install_finds_the_repository_sql_folder():
    assert paths.sql_dir() == paths._PACKAGE.parent / "sql"
    assert (paths.sql_dir() / "migrations" / "0001_init.sql").is_file()


def test_a_wheel_finds_the_sql_folder_packaged_beside_the_code(monkeypatch, tmp_path):
    (tmp_path / "site" / "service" / "sql" / "migrations").mkdir(parents=True)
    (tmp_path / "site" / "sql" / "migrations").mkdir(parents=True)  # where a checkout has it: the wheel wins
    monkeypatch.setattr(paths, "_PACKAGE", tmp_path / "site" / "service")
    assert paths.sql_dir() == tmp_path / "site" / "service" / "sql"


def test_an_install_without_the_sql_files_says_so(monkeypatch, tmp_path):
    (tmp_path / "service" / "sql").mkdir(parents=True)  # a folder without migrations/ is not it
    monkeypatch.setattr(paths, "_PACKAGE", tmp_path / "service")
    with pytest.raises(FileNotFoundError, match="the sql/ folder of context-store is missing from this install"):
        paths.sql_dir()
