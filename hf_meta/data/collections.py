"""Text-classification collections as uniform `datasets.DatasetDict`s.

Every collection comes back with the same schema in every split: a `text` column (`Value("string")`, stripped of
surrounding whitespace) and a `label` column (`ClassLabel` carrying the class names, identical across the splits of a
collection). The raw files are read from a local folder laid out like the project's `shared/data` folder
(`<data_dir>/banking77/...`, `<data_dir>/clinc150/...`, ...; see its `SOURCES.md` for provenance and counts). When no
folder is given, collections that have a public copy on the Hugging Face Hub (see [`HUB_REPO_IDS`]) are loaded from
there instead and normalised to the same schema.

Each collection has one small reader in `_READERS`; readers share the parsing helpers below, which all work on bytes
or with an explicit encoding, because some of the files are Latin-1 and contain bytes that `str.splitlines()` treats
as line breaks.
"""

from __future__ import annotations

import contextvars
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import datasets
from transformers.utils import logging

logger = logging.get_logger(__name__)

DATA_DIR_ENV_VAR = "HF_META_DATA_DIR"
"""Environment variable naming the default data folder, used when `load_collection` gets no `data_dir`."""
# Where a checkout's scripts find the data when neither `data_dir` nor the variable is given, from the working
# directory: `./data`, or the project's `shared/data` beside the checkout.
WORKING_DIRECTORY_DATA_DIRS = ("data", os.path.join("..", "shared", "data"))


def resolve_data_dir(
    data_dir: str | os.PathLike | None = None, *, search_working_directory: bool = True
) -> Path | None:
    """The raw-data folder: `data_dir`, else `$HF_META_DATA_DIR`, else (with `search_working_directory`) `./data`
    or `../shared/data` from the working directory. Never a location derived from where hf_meta is installed.

    Returns `None` when nothing is given and no candidate exists with `search_working_directory=False` (what
    [`load_collection`] then falls back to the Hub for); raises otherwise.

    Raises:
        FileNotFoundError: `data_dir` or `$HF_META_DATA_DIR` names a missing folder, or (searching the working
            directory) no candidate exists; the message names `HF_META_DATA_DIR`.

    Example:
        ```python
        >>> resolve_data_dir("../shared/data")
        PosixPath('../shared/data')
        ```
    """
    env = os.environ.get(DATA_DIR_ENV_VAR) or None
    if data_dir is not None or env is not None:
        origin = "`data_dir`" if data_dir is not None else f"${DATA_DIR_ENV_VAR}"
        path = Path(data_dir if data_dir is not None else env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"The data folder {str(path)!r} (from {origin}) does not exist; pass `--data_dir` (or `data_dir=`) "
                f"or set ${DATA_DIR_ENV_VAR} to a folder laid out like the project's `shared/data`."
            )
        return path
    if not search_working_directory:
        return None
    for candidate in WORKING_DIRECTORY_DATA_DIRS:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        f"No data folder: no `data_dir` given, ${DATA_DIR_ENV_VAR} is not set, and neither of "
        f"{list(WORKING_DIRECTORY_DATA_DIRS)} exists under the working directory {os.getcwd()!r}. Pass `--data_dir` "
        f"(or `data_dir=`) or set ${DATA_DIR_ENV_VAR} to a folder laid out like the project's `shared/data`."
    )


BINARY_SENTIMENT_NAMES = ("negative", "positive")
SST5_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
# Order fixed by the Kim-2014 `*.all` files: DESC=0, ENTY=1, ABBR=2, HUM=3, LOC=4, NUM=5.
TREC_NAMES = ("description", "entity", "abbreviation", "human", "location", "number")
AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")
TWEET_EVAL_SPLITS = {
    "emotion": ("train", "val", "test"),
    "hate": ("train", "val", "test"),
    "irony": ("train", "val", "test"),
    "offensive": ("train", "val", "test"),
    # The train text is missing from the source copy (see SOURCES.md), so only val/test exist locally.
    "sentiment": ("val", "test"),
}

# Raw split names in the source files -> the split names exposed by this module.
_SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation", "dev": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class HubSource:
    """Where a collection lives on the Hub and how to map its columns and labels to `text` / `label`.

    Args:
        repo_id: Hub dataset repository id.
        config: Dataset configuration name, if the repository has several.
        text_column: Column holding the text.
        label_column: Column holding the label (a `ClassLabel` or integer ids).
        names: Fixed class names of the collection. `None` takes them from the Hub `ClassLabel`.
        label_aliases: Hub class name -> class name of this module, where they differ.
        drop_labels: Hub class names whose examples are dropped (e.g. CLINC's out-of-scope `oos`).
        sort_names: Sort the class names taken from the Hub (to match the local reader's order).
        splits: Hub splits to keep; `None` keeps all of them.
    """

    repo_id: str
    config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    names: tuple[str, ...] | None = None
    label_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop_labels: frozenset[str] = frozenset()
    sort_names: bool = False
    splits: tuple[str, ...] | None = None


HUB_SOURCES: dict[str, HubSource] = {
    "banking77": HubSource("PolyAI/banking77"),
    "clinc150": HubSource(
        "clinc/clinc_oos", config="plus", label_column="intent", drop_labels=frozenset({"oos"}), sort_names=True
    ),
    "sst2": HubSource("stanfordnlp/sst2", text_column="sentence", names=BINARY_SENTIMENT_NAMES),
    "sst5": HubSource("SetFit/sst5", names=SST5_NAMES),
    "mr": HubSource(
        "cornell-movie-review-data/rotten_tomatoes",
        names=BINARY_SENTIMENT_NAMES,
        label_aliases={"neg": "negative", "pos": "positive"},
    ),
    "imdb": HubSource(
        "stanfordnlp/imdb",
        names=BINARY_SENTIMENT_NAMES,
        label_aliases={"neg": "negative", "pos": "positive"},
        splits=("train", "test"),
    ),
    "ag_news": HubSource("fancyzhx/ag_news"),
    "trec": HubSource(
        "CogComp/trec",
        label_column="coarse_label",
        names=TREC_NAMES,
        label_aliases={
            "DESC": "description",
            "ENTY": "entity",
            "ABBR": "abbreviation",
            "HUM": "human",
            "LOC": "location",
            "NUM": "number",
        },
    ),
}

HUB_REPO_IDS: dict[str, str] = {name: source.repo_id for name, source in HUB_SOURCES.items()}
"""Collection name -> Hugging Face Hub dataset repo id used when no `data_dir` is available.

Only these collections can be loaded without local files. The Hub copies can differ from the local files in their
splits (e.g. `mr` is one `train` split locally but train/validation/test on the Hub, `imdb` has train and test on the
Hub but only test locally, `sst2` is phrase-level GLUE on the Hub and its unlabelled test split is dropped).
"""

_Split = tuple[list[str], list[int]] | tuple[list[str], list[list[int]]]
"""Texts and integer labels of one split (a list of label ids per text for a multi-label collection)."""


@dataclasses.dataclass
class _RawCollection:
    names: Sequence[str]
    splits: dict[str, _Split]
    multi_label: bool = False  # `label` is a `Sequence(ClassLabel)`: every text carries a list of classes


MULTI_LABEL_COLLECTIONS = ("goemotions",)
"""Collections whose `label` column is a `Sequence(ClassLabel)` (a list of class ids per text, possibly empty)."""


_Reader = Callable[[Path], _RawCollection]


# ----------------------------------------------------------------------------------------------------- file helpers

MANIFEST_NAME = "MANIFEST.sha256"
"""Checksums beside the data (`sha256sum` format: `<hex digest>  ./<collection>/<file>` per line). When `data_dir`
holds one, every file a collection reads that it lists is verified, so a truncated or damaged copy fails loudly
instead of loading part of its rows."""

_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("hf_meta_data_root", default=None)
# Verified digests by (resolved path, size, mtime_ns): repeated loads of an unchanged file never re-hash it.
_VERIFIED: dict[tuple[str, int, int], str] = {}
_MANIFESTS: dict[tuple[str, int, int], dict[str, str]] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(root: Path) -> dict[str, str] | None:
    """`MANIFEST.sha256` of `root` as {normalised relative path: digest}, or `None` when there is none."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    key = _file_key(path)
    if key not in _MANIFESTS:
        entries = {}
        for number, line in enumerate(_decode(path.read_bytes(), path).split("\n"), 1):
            if not line.strip() or line.startswith("#"):
                continue
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*")  # `sha256sum -b` marks binary mode with `*`
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
                raise ValueError(
                    f"{str(path)!r} line {number}: expected `<sha256 hex digest>  <path>`, got {line[:80]!r}; fix "
                    "the line or remove the manifest."
                )
            entries[os.path.normpath(name)] = digest.lower()
        _MANIFESTS[key] = entries
    return _MANIFESTS[key]


def _verify(path: Path) -> None:
    """Check `path` against the manifest of the data folder being read (no-op without a manifest or entry)."""
    root = _ROOT.get()
    manifest = None if root is None else _manifest(root)
    if manifest is None:
        return
    try:
        relative = os.path.normpath(path.relative_to(root))
    except ValueError:
        return
    expected = manifest.get(relative)
    if expected is None:
        logger.debug(f"{str(path)!r} is not listed in {MANIFEST_NAME}; not verified.")
        return
    key = _file_key(path)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = _VERIFIED[key] = _sha256_of(path)
    if digest != expected:
        raise ValueError(
            f"{str(path)!r} ({key[1]} bytes) does not match {MANIFEST_NAME} ({str(root / MANIFEST_NAME)!r}): "
            f"sha256 {digest[:16]}..., expected {expected[:16]}...; the file is truncated or changed. Restore it "
            f"from its source (see SOURCES.md) or, if you changed it on purpose, update its line in {MANIFEST_NAME}."
        )


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Expected data file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise ValueError(f"Data file {str(path)!r} is empty; restore it from its source (see SOURCES.md).")
    _verify(path)
    return path


def _read_bytes(path: Path) -> bytes:
    return _require(path).read_bytes()


def _decode(data: bytes, path: Path, encoding: str = "utf-8", first_line: int = 1) -> str:
    """`data` decoded; an undecodable byte is reported with the file and its line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = first_line + data[: err.start].count(b"\n")
        raise ValueError(
            f"{str(path)!r} line {line}: not valid {encoding} ({err.reason} at byte {err.start}: "
            f"{data[err.start : err.start + 4]!r}); re-save the file as {encoding}."
        ) from None


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Lines of a text file, split on `\\n` only.

    Splitting bytes (not `str.splitlines()`) matters for the Latin-1 files, whose `\\x85` bytes would otherwise be
    taken as line breaks.
    """
    data = _read_bytes(path)
    if data.endswith(b"\n"):
        data = data[:-1]
    return [_decode(line, path, encoding, number) for number, line in enumerate(data.split(b"\n"), 1)] if data else []


def _preview(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_each(path: Path, items: Iterable[tuple[int, object]], parse: Callable, expected: str) -> list:
    """`parse` applied to each `(line number, item)`; a failure names the file, the line and what was expected."""
    results = []
    for line, item in items:
        try:
            results.append(parse(item))
        except (ValueError, IndexError, KeyError, TypeError) as err:
            raise ValueError(
                f"{str(path)!r} line {line}: expected {expected}, got {_preview(item)} ({type(err).__name__}: {err})."
            ) from None
    return results


def _read_rows(
    path: Path, *, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL, header: bool
) -> list[tuple[int, list[str]]]:
    """Rows of a CSV/TSV file parsed with the `csv` module (quoted fields may hold newlines and tabs), each with
    the line it starts on."""
    text = _decode(_read_bytes(path), path)
    # newline="" semantics: keep newlines inside quoted fields, let `csv` handle the CRLF row endings.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, start = [], 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{str(path)!r} line {reader.line_num}: {err}.") from None
    rows = rows[1:] if header else rows
    for line, row in rows:
        if not row:
            raise ValueError(f"{str(path)!r} line {line}: unexpected empty row.")
    return rows


def _read_json(path: Path) -> object:
    try:
        return json.loads(_decode(_read_bytes(path), path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}).") from None


def _read_json_lines(path: Path) -> list[tuple[int, dict]]:
    """The JSON object of each non-blank line, with its line number."""
    numbered = [(number, line) for number, line in enumerate(_read_lines(path), 1) if line.strip()]
    return list(zip([n for n, _ in numbered], _parse_each(path, numbered, json.loads, "a JSON object")))


def _parallel(texts: Sequence[str], labels: Sequence, source: Path) -> None:
    if len(texts) != len(labels):
        raise ValueError(
            f"{str(source)!r}: {len(texts)} texts but {len(labels)} labels; one of the two files is truncated or "
            "has extra lines."
        )


def _where(source: Path, lines: Sequence[int] | None, i: int) -> str:
    return f"{str(source)!r} line {lines[i]}" if lines is not None else f"{str(source)!r} (entry {i})"


def _encode_names(
    label_names: Iterable[str], names: Sequence[str], source: Path, lines: Sequence[int] | None = None
) -> list[int]:
    """Class names -> ids in `names`, failing loudly (with the line) on a name the collection does not have."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for i, name in enumerate(label_names):
        if name not in index:
            raise ValueError(f"{_where(source, lines, i)}: unknown class name {name!r}.")
        ids.append(index[name])
    return ids


def _check_ids(labels: Sequence[int], num_classes: int, source: Path, lines: Sequence[int] | None = None) -> list[int]:
    for i, label in enumerate(labels):
        if not 0 <= label < num_classes:
            raise ValueError(f"{_where(source, lines, i)}: label id {label} outside 0..{num_classes - 1}.")
    return list(labels)


def _parse_prefixed(line: str) -> tuple[int, str]:
    label, _, text = line.partition(" ")
    return int(label), text


def _prefixed_label_file(path: Path, num_classes: int, encoding: str = "utf-8") -> _Split:
    """A Kim-2014 style file: one `<label> <sentence>` per line."""
    lines = _read_lines(path, encoding)
    pairs = _parse_each(path, enumerate(lines, 1), _parse_prefixed, "`<integer label> <sentence>`")
    labels = [label for label, _ in pairs]
    return [text for _, text in pairs], _check_ids(labels, num_classes, path, range(1, len(lines) + 1))


def _sentence_label_tsv(path: Path, num_classes: int, quoting: int) -> _Split:
    """A TSV file with header `sentence\tlabel` and integer labels."""
    rows = _read_rows(path, delimiter="\t", quoting=quoting, header=True)
    pairs = _parse_each(path, rows, lambda row: (row[0], int(row[1])), "`<sentence>\\t<integer label>`")
    lines = [line for line, _ in rows]
    return [text for text, _ in pairs], _check_ids([label for _, label in pairs], num_classes, path, lines)


def _seq_label_dir(folder: Path) -> tuple[list[str], list[str]]:
    """A DNNC style split folder: parallel `seq.in` (texts) and `label` (class names) line files."""
    texts, label_names = _read_lines(folder / "seq.in"), _read_lines(folder / "label")
    _parallel(texts, label_names, folder)
    return texts, [name.strip() for name in label_names]


def _seq_label_splits(folder: Path, splits: Mapping[str, str], names: Sequence[str] | None = None) -> _RawCollection:
    """Several DNNC split folders; class names sorted from the labels seen unless `names` is given."""
    raw = {split: _seq_label_dir(folder / subfolder) for split, subfolder in splits.items()}
    if names is None:
        names = sorted({name for _, label_names in raw.values() for name in label_names})
    return _RawCollection(
        names,
        {
            split: (
                texts,
                _encode_names(label_names, names, folder / splits[split] / "label", range(1, len(label_names) + 1)),
            )
            for split, (texts, label_names) in raw.items()
        },
    )


# ------------------------------------------------------------------------------------------------------- readers


def _read_banking77(root: Path) -> _RawCollection:
    folder = root / "banking77"
    names = _read_json(folder / "categories.json")
    splits = {}
    for split in ("train", "test"):
        path = folder / f"{split}.csv"
        rows = _read_rows(path, header=True)
        pairs = _parse_each(path, rows, lambda row: (row[0], row[1]), "`<text>,<category>`")
        lines = [line for line, _ in rows]
        splits[split] = ([text for text, _ in pairs], _encode_names((c for _, c in pairs), names, path, lines))
    few_shot = _seq_label_splits(folder / "dnnc_splits", {"train_5": "train_5", "train_10": "train_10"}, names)
    return _RawCollection(names, splits | few_shot.splits)


def _read_clinc150(root: Path) -> _RawCollection:
    folder = root / "clinc150"
    path = folder / "data_full.json"
    data = _read_json(path)
    # Out-of-scope examples live under the `oos_*` keys; the label filter also guards against stray `oos` rows.
    pairs = {
        _SPLIT_NAMES[key]: [(text, label) for text, label in data[key] if label != "oos"]
        for key in ("train", "val", "test")
    }
    names = sorted({label for split_pairs in pairs.values() for _, label in split_pairs})
    splits = {
        split: ([text for text, _ in split_pairs], _encode_names((label for _, label in split_pairs), names, path))
        for split, split_pairs in pairs.items()
    }
    # Encoding with the json's intents checks that the DNNC few-shot files use the same label names.
    few_shot = _seq_label_splits(folder / "dnnc_splits", {"train_5": "train_5", "train_10": "train_10"}, names)
    return _RawCollection(names, splits | few_shot.splits)


def _read_hwu64(root: Path) -> _RawCollection:
    subfolders = ("train", "valid", "test", "train_5", "train_10")
    return _seq_label_splits(root / "hwu64", {_SPLIT_NAMES.get(sub, sub): sub for sub in subfolders})


def _read_sst2(root: Path) -> _RawCollection:
    folder = root / "sst2"
    names = BINARY_SENTIMENT_NAMES
    # GLUE's tsv files are not quoted: a `"` inside a sentence is literal text.
    validation = _sentence_label_tsv(folder / "dev.tsv", len(names), csv.QUOTE_NONE)
    return _RawCollection(
        names,
        {
            "train": _prefixed_label_file(folder / "stsa.binary.train", len(names)),
            "validation": validation,
            "test": _prefixed_label_file(folder / "stsa.binary.test", len(names)),
        },
    )


def _read_prefixed_label_collection(
    root: Path, *, folder: str, files: Mapping[str, str], names: Sequence[str], encoding: str = "utf-8"
) -> _RawCollection:
    """A collection made of `<label> <sentence>` files, `files` mapping split names to file names in `folder`."""
    return _RawCollection(
        names,
        {split: _prefixed_label_file(root / folder / file, len(names), encoding) for split, file in files.items()},
    )


def _read_sst5(root: Path) -> _RawCollection:
    files = {_SPLIT_NAMES[split]: f"stsa.fine.{split}" for split in ("train", "dev", "test")}
    return _read_prefixed_label_collection(root, folder="sst5", files=files, names=SST5_NAMES)


def _read_sst5_polarity(root: Path) -> _RawCollection:
    sst5 = _read_sst5(root)
    to_polarity = {0: 0, 1: 0, 3: 1, 4: 1}  # neutral (2) has no polarity and is dropped
    splits = {}
    for split, (texts, labels) in sst5.splits.items():
        kept = [(text, to_polarity[label]) for text, label in zip(texts, labels) if label in to_polarity]
        splits[split] = ([text for text, _ in kept], [label for _, label in kept])
    return _RawCollection(BINARY_SENTIMENT_NAMES, splits)


def _read_amazon(domain: str, root: Path) -> _RawCollection:
    folder = root / "amazon_multidomain" / domain
    names = BINARY_SENTIMENT_NAMES
    # Default quoting on purpose: reviews are quoted and hold newlines and tabs.
    splits = {
        _SPLIT_NAMES[split]: _sentence_label_tsv(folder / f"{split}.tsv", len(names), csv.QUOTE_MINIMAL)
        for split in ("train", "dev")
    }
    return _RawCollection(names, splits)


def _read_imdb(root: Path) -> _RawCollection:
    path = root / "imdb" / "aclImdb_test.tar.gz"
    names = BINARY_SENTIMENT_NAMES
    folder_label = {"neg": 0, "pos": 1}
    texts, labels = [], []
    with tarfile.open(_require(path), mode="r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")  # aclImdb/test/<pos|neg>/<id>_<rating>.txt
            if not member.isfile() or len(parts) != 4 or parts[2] not in folder_label:
                continue
            texts.append(archive.extractfile(member).read().decode("utf-8"))
            labels.append(folder_label[parts[2]])
    if not texts:
        raise ValueError(f"{str(path)!r}: no `aclImdb/test/{{pos,neg}}/*.txt` reviews found.")
    return _RawCollection(names, {"test": (texts, labels)})


def _read_tweet_eval(task: str, root: Path) -> _RawCollection:
    folder = root / "tweet_eval" / task
    mapping = [line.split("\t") for line in _read_lines(folder / "mapping.txt") if line.strip()]
    names = [name.strip() for _, name in sorted(mapping, key=lambda pair: int(pair[0]))]
    splits = {}
    for split in TWEET_EVAL_SPLITS[task]:
        texts = _read_lines(folder / f"{split}_text.txt")
        label_path = folder / f"{split}_labels.txt"
        labels = _parse_each(label_path, enumerate(_read_lines(label_path), 1), int, "an integer label id")
        _parallel(texts, labels, folder / f"{split}_text.txt")
        splits[_SPLIT_NAMES[split]] = (texts, _check_ids(labels, len(names), label_path, range(1, len(labels) + 1)))
    return _RawCollection(names, splits)


def _read_ag_news(root: Path) -> _RawCollection:
    folder = root / "ag_news"
    names = [name.strip() for name in _read_lines(folder / "classes.txt") if name.strip()]
    path = folder / "test.csv"
    rows = _read_rows(path, header=False)

    def parse(row: list[str]) -> tuple[str, int]:
        label, title, description = row
        return f"{title} {description}", int(label) - 1  # the file counts classes from 1

    pairs = _parse_each(path, rows, parse, '`"<class id>","<title>","<description>"`')
    lines = [line for line, _ in rows]
    return _RawCollection(
        names, {"test": ([text for text, _ in pairs], _check_ids([y for _, y in pairs], len(names), path, lines))}
    )


def _newsgroup_post(raw: bytes, max_chars: int = 1000) -> str:
    """Subject and body of a raw 20 Newsgroups post, without the other headers, quoted replies or attribution lines.

    The headers (sender, organisation, newsgroups) name the class outright, and quoted text repeats other posts:
    scikit-learn's `remove=("headers", "footers", "quotes")` exists for the same reason.
    """
    text = raw.decode("latin-1")
    header, _, body = text.partition("\n\n")
    subject = next(
        (line[len("Subject:") :].strip() for line in header.splitlines() if line.startswith("Subject:")), ""
    )
    kept = [
        line.strip()
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith((">", "|")) and not _ATTRIBUTION.search(line)
    ]
    return " ".join([subject, *kept])[:max_chars]


_ATTRIBUTION = re.compile(r"(writes|wrote|said):?\s*$|^In article", re.IGNORECASE)


def _read_20newsgroups(root: Path) -> _RawCollection:
    path = root / "20newsgroups" / "20news-bydate.tar.gz"
    posts: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    with tarfile.open(_require(path), mode="r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")  # 20news-bydate-<train|test>/<newsgroup>/<id>
            if not member.isfile() or len(parts) != 3 or not parts[0].startswith("20news-bydate-"):
                continue
            split = parts[0].removeprefix("20news-bydate-")
            if split in posts:
                posts[split].append((parts[1], _newsgroup_post(archive.extractfile(member).read())))
    if not posts["train"] or not posts["test"]:
        raise ValueError(f"{str(path)!r}: expected `20news-bydate-{{train,test}}/<newsgroup>/<id>` posts.")
    names = sorted({group for group, _ in posts["train"]})
    index = {name: i for i, name in enumerate(names)}
    return _RawCollection(
        names,
        {split: ([text for _, text in rows], [index[group] for group, _ in rows]) for split, rows in posts.items()},
    )


def _read_goemotions(root: Path) -> _RawCollection:
    """GoEmotions: `text<TAB>label ids<TAB>comment id` lines, no header, no quoting; the ids are comma-separated
    indices into `emotions.txt` (27 emotions + neutral)."""
    folder = root / "goemotions"
    names = [line.strip() for line in _read_lines(folder / "emotions.txt") if line.strip()]

    def parse(line: str) -> tuple[str, list[int]]:
        text, ids, _ = line.split("\t")
        return text, sorted({int(i) for i in ids.split(",")})

    splits = {}
    for raw, split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        path = folder / f"{raw}.tsv"
        lines = _read_lines(path)
        rows = _parse_each(path, enumerate(lines, 1), parse, "`text<TAB>comma-separated label ids<TAB>comment id`")
        for number, (_, ids) in enumerate(rows, 1):
            if any(not 0 <= i < len(names) for i in ids):
                raise ValueError(
                    f"{str(path)!r} line {number}: label ids {ids} outside 0..{len(names) - 1} ({len(names)} names "
                    "in emotions.txt); restore the files from their source (see SOURCES.md)."
                )
        splits[split] = ([text for text, _ in rows], [ids for _, ids in rows])
    return _RawCollection(names, splits, multi_label=True)


def _read_json_lines_collection(file: str, root: Path) -> _RawCollection:
    path = root / file
    records = _read_json_lines(path)
    pairs = _parse_each(
        path, records, lambda record: (str(record["raw"]), int(record["label"])), 'an object with "raw" and "label"'
    )
    labels = _check_ids([label for _, label in pairs], 1 << 30, path, [line for line, _ in records])
    # The files carry only label ids; the ids themselves are the best names available.
    names = [str(i) for i in range(max(labels) + 1)]
    return _RawCollection(names, {"train": ([text for text, _ in pairs], labels)})


_READERS: dict[str, _Reader] = {
    "banking77": _read_banking77,
    "clinc150": _read_clinc150,
    "hwu64": _read_hwu64,
    "sst2": _read_sst2,
    "sst5": _read_sst5,
    "sst5_polarity": _read_sst5_polarity,
    "mr": functools.partial(
        _read_prefixed_label_collection,
        folder="mr",
        files={"train": "rt-polarity.all"},
        names=BINARY_SENTIMENT_NAMES,
        encoding="latin-1",
    ),
    "subj": functools.partial(
        _read_prefixed_label_collection,
        folder="subj",
        files={"train": "subj.all"},
        names=("subjective", "objective"),
        encoding="latin-1",
    ),
    "trec": functools.partial(
        _read_prefixed_label_collection,
        folder="trec",
        files={"train": "TREC.train.all", "test": "TREC.test.all"},
        names=TREC_NAMES,
        encoding="latin-1",
    ),
    **{f"amazon_{domain}": functools.partial(_read_amazon, domain) for domain in AMAZON_DOMAINS},
    "airline": functools.partial(_read_amazon, "airline"),
    "imdb": _read_imdb,
    **{f"tweet_eval_{task}": functools.partial(_read_tweet_eval, task) for task in TWEET_EVAL_SPLITS},
    "ag_news": _read_ag_news,
    "20newsgroups": _read_20newsgroups,
    "goemotions": _read_goemotions,
    "huffpost": functools.partial(_read_json_lines_collection, "huffpost/huffpost.json"),
    "reuters": functools.partial(_read_json_lines_collection, "reuters/reuters.json"),
}


# --------------------------------------------------------------------------------------------------- building


def _features(names: Sequence[str], multi_label: bool = False) -> datasets.Features:
    label = datasets.ClassLabel(names=list(names))
    return datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.Sequence(label) if multi_label else label}
    )


def _build(raw: _RawCollection) -> datasets.DatasetDict:
    features = _features(raw.names, raw.multi_label)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": [text.strip() for text in texts], "label": list(labels)}, features=features
            )
            for split, (texts, labels) in raw.splits.items()
        }
    )


def _load_from_hub(name: str) -> datasets.DatasetDict:
    source = HUB_SOURCES.get(name)
    if source is None:
        raise ValueError(
            f"Collection {name!r} has no Hugging Face Hub copy, so `data_dir` is required: pass `data_dir=` pointing "
            f"to a folder holding `{name}/...` files (e.g. the project's `../shared/data`), or set the "
            f"{DATA_DIR_ENV_VAR} environment variable."
        )
    logger.info(f"Loading collection {name!r} from the Hub repo {source.repo_id!r}.")
    try:
        hub = datasets.load_dataset(source.repo_id, source.config)
    except Exception as err:  # offline mode, DNS failures and missing repos all raise different types
        raise ValueError(
            f"Could not load collection {name!r}: the Hugging Face Hub repo {source.repo_id!r} could not be reached "
            f"({type(err).__name__}: {err}). Pass `data_dir=` pointing to a folder holding `{name}/...` files "
            f"(e.g. the project's `../shared/data`), or set the {DATA_DIR_ENV_VAR} environment variable."
        ) from err
    return _normalise_hub(hub, source)


def _normalise_hub(hub: datasets.DatasetDict, source: HubSource) -> datasets.DatasetDict:
    """Map a Hub DatasetDict onto `text` / `label` with this module's class names, dropping unusable rows."""
    kept_splits = {split: ds for split, ds in hub.items() if source.splits is None or split in source.splits}
    first = next(iter(kept_splits.values()))
    hub_feature = first.features[source.label_column]
    hub_names = hub_feature.names if isinstance(hub_feature, datasets.ClassLabel) else None
    names = source.names
    if names is None:
        if hub_names is None:
            raise ValueError(f"{source.repo_id!r}: column {source.label_column!r} has no class names.")
        names = [source.label_aliases.get(n, n) for n in hub_names if n not in source.drop_labels]
        names = sorted(names) if source.sort_names else names
    index = {n: i for i, n in enumerate(names)}

    def to_id(label: int) -> int | None:
        # Negative ids mark unlabelled rows (e.g. GLUE test); dropped classes map to None too.
        if label < 0:
            return None
        if hub_names is None:
            return label if label < len(names) else None
        hub_name = hub_names[label]
        return None if hub_name in source.drop_labels else index[source.label_aliases.get(hub_name, hub_name)]

    splits = {}
    for split, ds in kept_splits.items():
        pairs = [(text, to_id(label)) for text, label in zip(ds[source.text_column], ds[source.label_column])]
        pairs = [(text, label) for text, label in pairs if label is not None]
        if not pairs:
            logger.info(f"{source.repo_id!r}: dropping split {split!r}, which has no usable labels.")
            continue
        splits[split] = ([text for text, _ in pairs], [label for _, label in pairs])
    return _build(_RawCollection(names, splits))


# ------------------------------------------------------------------------------------------------------ public API


def list_collections() -> list[str]:
    """Names accepted by [`load_collection`], sorted."""
    return sorted(_READERS)


def load_collection(name: str, data_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Load a text-classification collection as a `DatasetDict` with `text` and `label` columns.

    Every split has exactly two columns: `text` (`Value("string")`, stripped of surrounding whitespace) and `label`
    (`ClassLabel` with the collection's class names, the same feature in every split). The multi-label collections
    of [`MULTI_LABEL_COLLECTIONS`] (`"goemotions"`) have a `Sequence(ClassLabel)` `label` instead: a list of class
    ids per text.

    Where the data comes from, in order:

    1. `data_dir`, a folder laid out like the project's `shared/data` (`<data_dir>/<name>/...` files, see its
       `SOURCES.md`);
    2. the `HF_META_DATA_DIR` environment variable, when `data_dir` is `None`;
    3. the Hugging Face Hub copy listed in [`HUB_REPO_IDS`], for the collections that have one. Its splits may
       differ from the local files (see [`HUB_REPO_IDS`]).

    Args:
        name: One of [`list_collections`], e.g. `"banking77"`, `"clinc150"` (out-of-scope examples dropped),
            `"sst5_polarity"` (SST-5 without neutral) or `"tweet_eval_emotion"`.
        data_dir: Folder holding the collections' raw files.

    Returns:
        The collection's splits. Typical names are `train`, `validation`, `test`, plus `train_5` / `train_10`
        (5 and 10 examples per class) for `banking77`, `clinc150` and `hwu64`.

    Raises:
        ValueError: `name` is unknown, the collection has no Hub copy and no folder was given, the Hub could not be
            reached, or a file has malformed content.
        FileNotFoundError: `data_dir` (or a file expected inside it) does not exist.

    Example:

    ```python
    >>> from hf_meta import load_collection
    >>> banking = load_collection("banking77", data_dir="../shared/data")
    >>> banking["train_5"].num_rows, banking["train"].features["label"].num_classes
    (385, 77)
    >>> banking["train"][0]
    {'text': 'I am still waiting on my card?', 'label': 0}
    ```
    """
    if name not in _READERS:
        raise ValueError(f"Unknown collection {name!r}. Known collections: {', '.join(list_collections())}.")
    root = resolve_data_dir(data_dir, search_working_directory=False)
    if root is None:
        return _load_from_hub(name)
    if data_dir is None:
        logger.info(f"Reading collection {name!r} from ${DATA_DIR_ENV_VAR}={str(root)!r}.")
    token = _ROOT.set(root)
    try:
        raw = _READERS[name](root)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Collection {name!r}: {err} `data_dir` must hold the `{name}` files laid out as in the project's "
            "`shared/data` folder (see its SOURCES.md)."
        ) from err
    finally:
        _ROOT.reset(token)
    return _build(raw)
