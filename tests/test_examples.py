"""The example topologies run offline with one command and store what they say."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageStat

from helpers import run_cli
from nodes.text import parse_html, tokenize

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def bundled_site() -> tuple[set[str], set[str]]:
    """The paths of the bundled site's pages (as the crawler names them) and of the missing pages they link to."""
    site = TOPOLOGIES / "site"
    files = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    linked = {link.removeprefix("http://site.test/") for name in files
              for link in parse_html((site / name).read_text(), base_url=f"http://site.test/{name}")["links"]
              if link.startswith("http://site.test/")}
    pages = {"/" + name.removesuffix("index.html") for name in files}
    return pages, {"/" + name for name in linked if name not in files and name.removesuffix("/") not in {
        file.removesuffix("/index.html") for file in files}}


def pages(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return sorted(connection.execute("SELECT url, status, error, title, words, links FROM pages"))


@pytest.mark.parametrize("options", [[], ["--inproc"]])
def test_crawl_stores_every_page_of_the_bundled_site_in_crawl_db_of_the_current_directory(tmp_path, options):
    code, _, stderr = run_cli("run", *options, str(TOPOLOGIES / "crawl.py"), cwd=tmp_path)
    assert code == 0, stderr
    db = tmp_path / "crawl.db"
    assert f"[store/0@localhost] stored 45 pages in table 'pages' of {db}" in stderr
    rows = pages(db)
    site_pages, site_missing = bundled_site()
    assert len(rows) == len(site_pages) + len(site_missing) == 45
    found = [row for row in rows if row[1] == 200]
    missing = [row for row in rows if row[1] == 404]
    assert {urlsplit(url).path for url, *_ in found} == site_pages and len(found) == 40
    assert {urlsplit(url).path for url, *_ in missing} == site_missing
    assert all(title and words > 100 and links != "[]" for _, _, error, title, words, links in found)
    assert all(error.startswith("HTTPStatusError") for _, _, error, *_ in missing)


def test_crawl_db_can_be_chosen_with_set(tmp_path):
    db = tmp_path / "out" / "valley.db"
    code, _, stderr = run_cli("run", str(TOPOLOGIES / "crawl.py"), "--set", f"db={db}", cwd=tmp_path)
    assert code == 0, stderr
    assert f"of {db}" in stderr
    assert len(pages(db)) == 45
    assert not (tmp_path / "crawl.db").exists()


def word_counts(*texts: Path) -> list[dict]:
    """What wordcount.py should store for ``texts``: every word, most frequent first, equal counts by word."""
    counts = Counter(word for text in texts for word in tokenize(text.read_text()))
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return [{"word": word, "count": count} for word, count in ranked]


def json_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("options", [[], ["--inproc"]])
def test_wordcount_stores_the_count_of_every_word_of_the_bundled_texts_in_wordcount_jsonl(tmp_path, options):
    code, _, stderr = run_cli("run", *options, str(TOPOLOGIES / "wordcount.py"), cwd=tmp_path)
    assert code == 0, stderr
    texts = sorted((TOPOLOGIES / "texts").glob("*.txt"))
    expected = word_counts(*texts)
    assert len(texts) == 5 and sum(row["count"] for row in expected) > 4000
    out = tmp_path / "wordcount.jsonl"
    assert json_lines(out) == expected
    printed = [line.removeprefix("[save/0@localhost] ") for line in stderr.splitlines() if line.startswith("[save/")]
    assert printed == [f"{row['count']:6} {row['word']}" for row in expected[:10]] + [
        f"stored the counts of {len(expected)} different words in {out}"
    ]


@pytest.mark.slow
def test_wordcount_counts_the_texts_set_names_into_the_file_set_names_afresh_each_run(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("The heron and the wren.\n\nA wren!\n")
    (tmp_path / "books" / "b.txt").write_text("Don't feed the heron.\n")
    (tmp_path / "books" / "skipped.md").write_text("heron heron heron\n")
    args = ["run", str(TOPOLOGIES / "wordcount.py"), "--set", "texts=books/*.txt", "--set", "out=out/counts.jsonl"]
    for _ in range(2):
        code, _, stderr = run_cli(*args, cwd=tmp_path)
        assert code == 0, stderr
        assert json_lines(tmp_path / "out" / "counts.jsonl") == [
            {"word": "the", "count": 3}, {"word": "heron", "count": 2}, {"word": "wren", "count": 2},
            {"word": "a", "count": 1}, {"word": "and", "count": 1}, {"word": "don't", "count": 1},
            {"word": "feed", "count": 1},
        ]
    assert f"stored the counts of 7 different words in {tmp_path / 'out' / 'counts.jsonl'}" in stderr
    assert not (tmp_path / "wordcount.jsonl").exists()


def count_primes_with_cli(tmp_path: Path, *options: str) -> tuple[dict, str]:
    """Run tasks.py below 100,000 in chunks of 5,000 (20 chunks): (primes.json, stderr)."""
    code, _, stderr = run_cli("run", *options, str(TOPOLOGIES / "tasks.py"), "--set", "n=100000",
                                   "--set", "chunk=5000", cwd=tmp_path)
    assert code == 0, stderr
    return json.loads((tmp_path / "primes.json").read_text()), stderr


@pytest.mark.parametrize("assign", ["round-robin", "key"])
def test_tasks_counts_the_primes_below_n_from_every_chunk_exactly_once(tmp_path, assign):
    summary, stderr = count_primes_with_cli(tmp_path, "--set", f"assign={assign}")
    assert f"[combine/0@localhost] 9592 primes below 100000, counted in 20 chunks ({assign}); " \
           f"written to {tmp_path / 'primes.json'}" in stderr
    assert {key: summary[key] for key in ("n", "chunk", "assign", "chunks", "primes")} == {
        "n": 100000, "chunk": 5000, "assign": assign, "chunks": 20, "primes": 9592}
    replicas = summary["replica_of_chunk"]
    assert len(replicas) == 20 and set(replicas) <= {0, 1, 2, 3}
    assert summary["chunks_per_replica"] == {str(replica): done for replica, done in sorted(Counter(replicas).items())}
    assert len(set(replicas)) > 1


def test_tasks_round_robin_gives_every_worker_replica_chunks(tmp_path):
    summary, _ = count_primes_with_cli(tmp_path)
    assert summary["assign"] == "round-robin"
    assert sorted(summary["chunks_per_replica"]) == ["0", "1", "2", "3"]


def test_tasks_by_key_sends_each_chunk_to_the_same_replica_in_every_run(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, _ = count_primes_with_cli(tmp_path / "one", "--set", "assign=key")
    second, _ = count_primes_with_cli(tmp_path / "two", "--set", "assign=key", "--inproc")
    assert first["replica_of_chunk"] == second["replica_of_chunk"]


def test_tasks_fails_naming_an_unknown_assign_mode(tmp_path):
    code, _, stderr = run_cli("run", str(TOPOLOGIES / "tasks.py"), "--set", "assign=hash", cwd=tmp_path)
    assert code == 1
    assert "ValueError: --set assign= must be 'round-robin' or 'key', got 'hash'" in stderr
    assert not (tmp_path / "primes.json").exists()


def image_rows(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return {row["name"]: dict(row) for row in connection.execute("SELECT * FROM images")}


def assert_statistics_and_thumbnail(row: dict, image_path: Path, thumbnails: Path) -> None:
    """The row of ``image_path`` holds its statistics; its thumbnail is Pillow's, at most 128x128."""
    with Image.open(image_path) as image:
        red, green, blue = (round(mean) for mean in ImageStat.Stat(image.convert("RGB")).mean)
        assert row == {
            "path": str(image_path), "name": image_path.name, "bytes": image_path.stat().st_size,
            "format": image.format, "width": image.width, "height": image.height, "mode": image.mode,
            "brightness": round(ImageStat.Stat(image.convert("L")).mean[0], 2),
            "mean_colour": f"#{red:02x}{green:02x}{blue:02x}", "thumbnail": image_path.name,
            "replica": row["replica"], "error": None,
        }
        expected = image.copy()
        expected.thumbnail((128, 128))
    with Image.open(thumbnails / row["thumbnail"]) as thumbnail:
        assert thumbnail.size == expected.size and max(thumbnail.size) <= 128
        assert (thumbnail.format, thumbnail.mode) == (image.format, image.mode)


def test_images_makes_a_thumbnail_and_a_row_for_every_test_image_over_several_replicas(tmp_path):
    code, _, stderr = run_cli("run", str(TOPOLOGIES / "images.py"), cwd=tmp_path)
    assert code == 0, stderr
    db, thumbnails = tmp_path / "images.db", tmp_path / "thumbnails"
    assert f"[save/0@localhost] saved 40 thumbnails in {thumbnails}" in stderr
    assert f"[store/0@localhost] stored the statistics of 40 files in table 'images' of {db}" in stderr
    drawn = sorted((tmp_path / "images-in").iterdir())
    assert [path.suffix for path in drawn].count(".jpg") == 16 and len(drawn) == 40
    rows = image_rows(db)
    assert sorted(rows) == [path.name for path in drawn]
    assert sorted(path.name for path in thumbnails.iterdir()) == sorted(rows)
    for path in drawn:
        assert_statistics_and_thumbnail(rows[path.name], path, thumbnails)
    assert {row["mode"] for row in rows.values()} == {"RGB", "RGBA", "L", "P"}
    assert len({row["replica"] for row in rows.values()}) > 1


def test_images_reads_the_directory_set_names_and_writes_where_set_says_replacing_the_table(tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (300, 200), (255, 0, 0)).save(pictures / "red.png")
    Image.new("L", (50, 40), 90).save(pictures / "grey.jpg")
    (pictures / "notes.txt").write_text("not a picture\n")
    args = ["--set", "images=pictures", "--set", "thumbnails=out/thumbs", "--set", "db=out/pictures.db"]
    for options in [["--inproc"], []]:
        code, _, stderr = run_cli("run", *options, str(TOPOLOGIES / "images.py"), *args, cwd=tmp_path)
        assert code == 0, stderr
        thumbnails, db = tmp_path / "out" / "thumbs", tmp_path / "out" / "pictures.db"
        assert f"saved 2 thumbnails in {thumbnails}" in stderr
        assert f"stored the statistics of 3 files in table 'images' of {db}" in stderr
        rows = image_rows(db)
        assert sorted(rows) == ["grey.jpg", "notes.txt", "red.png"]
        assert_statistics_and_thumbnail(rows["red.png"], pictures / "red.png", thumbnails)
        assert_statistics_and_thumbnail(rows["grey.jpg"], pictures / "grey.jpg", thumbnails)
        assert (rows["red.png"]["mean_colour"], rows["red.png"]["brightness"]) == ("#ff0000", 76.0)
        assert rows["notes.txt"]["error"].startswith("UnidentifiedImageError: cannot identify image file")
        assert rows["notes.txt"]["width"] is None and rows["notes.txt"]["thumbnail"] is None
        assert sorted(path.name for path in thumbnails.iterdir()) == ["grey.jpg", "red.png"]
        with Image.open(thumbnails / "red.png") as thumbnail:
            assert thumbnail.size == (128, 85)
    assert not (tmp_path / "images-in").exists() and not (tmp_path / "images.db").exists()


@pytest.mark.slow
def test_crawl_twice_in_one_directory_stores_the_pages_once(tmp_path):
    for _ in range(2):
        code, _, stderr = run_cli("run", str(TOPOLOGIES / "crawl.py"), cwd=tmp_path)
        assert code == 0, stderr
    assert len(pages(tmp_path / "crawl.db")) == 45
