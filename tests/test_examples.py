"""The example topologies run offline with one command and store what they say."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers import run_cli

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def pages(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return sorted(connection.execute("SELECT url, status, error, title, words, links FROM pages"))


@pytest.mark.parametrize("options", [[], ["--inproc"]])
def test_crawl_stores_every_page_of_the_bundled_site_in_crawl_db_of_the_current_directory(tmp_path, options):
    code, stdout, stderr = run_cli("run", *options, str(TOPOLOGIES / "crawl.py"), cwd=tmp_path)
    assert code == 0, stderr
    db = tmp_path / "crawl.db"
    assert f"[store/0@localhost] stored 42 pages in table 'pages' of {db}" in stderr
    rows = pages(db)
    sitemap = (TOPOLOGIES / "site" / "sitemap.txt").read_text().split()
    assert len(rows) == len(sitemap) == 42
    found = [row for row in rows if row[1] == 200]
    missing = [row for row in rows if row[1] == 404]
    assert len(found) == 40 and len(missing) == 2
    assert all(title and words > 100 and links != "[]" for _, _, error, title, words, links in found)
    assert all(error.startswith("HTTPStatusError") for _, _, error, *_ in missing)


def test_crawl_db_can_be_chosen_with_set(tmp_path):
    db = tmp_path / "out" / "valley.db"
    code, stdout, stderr = run_cli("run", str(TOPOLOGIES / "crawl.py"), "--set", f"db={db}", cwd=tmp_path)
    assert code == 0, stderr
    assert f"of {db}" in stderr
    assert len(pages(db)) == 42
    assert not (tmp_path / "crawl.db").exists()
