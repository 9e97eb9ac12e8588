"""Issue 14 item 9: truncated or damaged data files are detected, and parse errors name the file and line."""

import hashlib
import shutil
import time

import pytest

from hf_meta import load_collection
from hf_meta.data import collections


def copy_collection(data_dir, tmp_path, folder, manifest=True):
    """A data folder holding only `folder`, with the matching lines of the real MANIFEST.sha256."""
    root = tmp_path / "data"
    shutil.copytree(data_dir / folder, root / folder)
    if manifest:
        lines = [
            line
            for line in (data_dir / "MANIFEST.sha256").read_text().splitlines()
            if line.split(maxsplit=1)[1].startswith(f"./{folder}/")
        ]
        assert lines
        (root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    return root


def truncate(path, fraction=0.5):
    data = path.read_bytes()
    cut = data[: int(len(data) * fraction)]
    path.write_bytes(cut[: cut.rfind(b"\n") + 1])  # a clean cut at a line end: the rows that are left parse


def test_truncated_file_is_refused_against_the_manifest(data_dir, tmp_path):
    root = copy_collection(data_dir, tmp_path, "trec")
    assert load_collection("trec", root)["train"].num_rows == 5452
    truncate(root / "trec" / "TREC.train.all")
    # Before: half of the training rows loaded silently.
    with pytest.raises(ValueError, match=r"TREC\.train\.all.*does not match MANIFEST\.sha256") as err:
        load_collection("trec", root)
    assert "sha256" in str(err.value) and str(root / "MANIFEST.sha256") in str(err.value)


def test_empty_file_is_refused_without_a_manifest(data_dir, tmp_path):
    root = copy_collection(data_dir, tmp_path, "trec", manifest=False)
    (root / "trec" / "TREC.test.all").write_bytes(b"")
    with pytest.raises(ValueError, match=r"TREC\.test\.all.* is empty"):
        load_collection("trec", root)


def test_files_not_in_the_manifest_still_load(data_dir, tmp_path):
    root = copy_collection(data_dir, tmp_path, "trec")
    (root / "MANIFEST.sha256").write_text("0" * 64 + "  ./other/file.txt\n")
    assert load_collection("trec", root)["test"].num_rows == 500


def test_manifest_check_is_cached_per_file_state(data_dir, tmp_path, monkeypatch):
    root = copy_collection(data_dir, tmp_path, "trec")
    calls = []
    real = collections._sha256_of
    monkeypatch.setattr(collections, "_sha256_of", lambda path: calls.append(path) or real(path))
    load_collection("trec", root)
    load_collection("trec", root)
    assert len(calls) == 2  # two files, hashed once each
    path = root / "trec" / "TREC.test.all"
    data = path.read_bytes()
    path.write_bytes(data.replace(b"What", b"Whot", 1))  # same size; the new mtime invalidates the cache
    with pytest.raises(ValueError, match="does not match"):
        load_collection("trec", root)


def test_manifest_costs_little_on_the_real_data(data_dir):
    collections._VERIFIED.clear()
    start = time.perf_counter()
    load_collection("clinc150", data_dir)
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_collection("clinc150", data_dir)
    again = time.perf_counter() - start
    assert again < first + 0.5  # cached: no re-hash
    digest = hashlib.sha256((data_dir / "clinc150" / "data_full.json").read_bytes()).hexdigest()
    assert any(value == digest for value in collections._VERIFIED.values())


def broken(data_dir, tmp_path, folder, file, edit):
    root = copy_collection(data_dir, tmp_path, folder, manifest=False)
    path = root / folder / file
    path.write_bytes(edit(path.read_bytes()))
    return root


def replace_line(data, line_number, content):
    lines = data.split(b"\n")
    lines[line_number - 1] = content
    return b"\n".join(lines)


def insert_line(data, line_number, content):
    lines = data.split(b"\n")
    lines.insert(line_number - 1, content)
    return b"\n".join(lines)


PARSE_ERRORS = [
    # (collection, folder, file, edit, expected message)
    ("trec", "trec", "TREC.test.all", lambda d: insert_line(d, 3, b"XYZ what is this"), r"TREC\.test\.all.* line 3"),
    (
        "trec",
        "trec",
        "TREC.test.all",
        lambda d: insert_line(d, 4, b"9 label out of range"),
        r"TREC\.test\.all.* line 4",
    ),
    ("sst2", "sst2", "dev.tsv", lambda d: insert_line(d, 5, b"a sentence with no label"), r"dev\.tsv.* line 5"),
    ("sst2", "sst2", "dev.tsv", lambda d: insert_line(d, 6, b"a sentence\tpositive"), r"dev\.tsv.* line 6"),
    (
        "banking77",
        "banking77",
        "test.csv",
        lambda d: insert_line(d, 7, b"some text,not_a_category"),
        r"test\.csv.* line 7.*not_a_category",
    ),
    ("hwu64", "hwu64", "test/seq.in", lambda d: replace_line(d, 2, b"caf\xe9 bad byte"), r"seq\.in.* line 2"),
    (
        "huffpost",
        "huffpost",
        "huffpost.json",
        lambda d: insert_line(d, 3, b"{broken json"),
        r"huffpost\.json.* line 3",
    ),
    (
        "huffpost",
        "huffpost",
        "huffpost.json",
        lambda d: insert_line(d, 2, b'{"raw": "x"}'),
        r"huffpost\.json.* line 2",
    ),
    ("clinc150", "clinc150", "data_full.json", lambda d: d[:1000], r"data_full\.json.* line \d+"),
    ("ag_news", "ag_news", "test.csv", lambda d: insert_line(d, 4, b'"3","only a title"'), r"test\.csv.* line 4"),
    (
        "tweet_eval_irony",
        "tweet_eval",
        "irony/val_labels.txt",
        lambda d: insert_line(d, 3, b"x"),
        r"val_labels\.txt.* line 3",
    ),
    ("mr", "mr", "rt-polarity.all", lambda d: insert_line(d, 2, b"\xff\xfe 1 text"), r"rt-polarity\.all.* line 2"),
    ("sst5", "sst5", "stsa.fine.dev", lambda d: insert_line(d, 2, b"\xff 1 text"), r"stsa\.fine\.dev.* line 2"),
]


@pytest.mark.parametrize(
    "name, folder, file, edit, message", PARSE_ERRORS, ids=[f"{p[0]}-{p[2]}" for p in PARSE_ERRORS]
)
def test_parse_errors_name_the_file_and_line(data_dir, tmp_path, name, folder, file, edit, message):
    root = broken(data_dir, tmp_path, folder, file, edit)
    with pytest.raises(ValueError, match=message):
        load_collection(name, root)
