"""Crash-safe writes: a reader sees the previous file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


STAGING_PREFIX = ".staging-"

# The files an hf_meta save writes into its folder (the classifier's and the trainer's). A save owns them: those it
# does not write this time are removed, so an unfitted save over a fitted classifier cannot leave the old head
# behind (the reload would look fitted), nor a new adapter sit beside another model's tokenizer. `README.md` is not
# listed: a user's own card is never deleted (our savers overwrite it through peft). Anything else in the folder
# (`checkpoint-*`, the user's files) is kept.
HF_META_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adaptation_config.json",
    "classifier_head.safetensors",
    "classifier_labels.json",
    "training_args.json",
    "training_args.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "inner_loop.safetensors",
)


# Only hf_meta writes files of these names, so a save may remove them from a folder without a manifest (its
# manifest deleted after a hand edit, or files copied in): a stale head must never survive an unfitted save. Other
# names (tokenizer files, `training_args.bin`) are removed only when the folder's manifest shows hf_meta wrote them.
HF_META_ONLY_FILES = (
    "adaptation_config.json",
    "classifier_head.safetensors",
    "classifier_labels.json",
    "inner_loop.safetensors",
    "training_args.json",
)
MANIFEST_NAME = "hf_meta_manifest.json"
UNPINNED_FILES = ("README.md", "adaptation_config.json", "adapter_config.json")  # edited by hand too
LOCK_NAME = ".hf_meta_save.lock"
STAGING_MARKER = ".hf_meta_staging"  # inside every staging folder hf_meta creates; others are never deleted


class ConcurrentSaveError(RuntimeError):
    """Another process (or another save in this one) is saving into the same folder."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def save_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `target` for one save; a second save meanwhile fails at once, naming the folder.

    The lock is `flock` on `target/.hf_meta_save.lock`, released (and the file removed) when the save ends, and
    released by the OS when a process dies, so a killed save never blocks the next one. Without `fcntl` (Windows)
    saves are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no POSIX locks: one saver per folder is the user's to ensure
        yield
        return
    path = target / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = os.stat(path)  # the holder before us may have removed the file after we opened it
        except (BlockingIOError, FileNotFoundError):
            raise ConcurrentSaveError(
                f"Another save into {target} is in progress (it holds {path}); wait for it to finish, or save into "
                "another folder. Two saves into one folder would mix their files."
            ) from None
        if current.st_ino != os.fstat(fd).st_ino:
            raise ConcurrentSaveError(
                f"Another save into {target} started at the same time (lock {path}); save again, one at a time."
            )
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not an hf_meta manifest ({type(err).__name__}); save the folder again.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise ValueError(f"{path} is not an hf_meta manifest; save the folder again.")
    return manifest


def verify_saved_folder(folder: str | os.PathLike, checked: Iterable[str] | None = None) -> None:
    """Refuse a folder whose last hf_meta save did not complete, or whose files were mixed with another save's.

    A folder without `hf_meta_manifest.json` (not saved by hf_meta, or its manifest deleted after a deliberate edit)
    is not checked.
    Otherwise every file the manifest lists must be there with its recorded SHA-256, and no file of `checked`
    (default: the adapter's and hf_meta's own files) may be there unlisted.
    """
    folder = Path(folder)
    checked = (*HF_META_ONLY_FILES, "adapter_config.json", "adapter_model.safetensors") if checked is None else checked
    manifest = read_manifest(folder)
    if manifest is None:
        return
    path = folder / MANIFEST_NAME
    if not manifest.get("complete"):
        raise ValueError(
            f"{path} says the last save into {folder} did not finish (interrupted, or killed between its moves): the "
            "folder may mix files of two saves. Save the classifier or adapter into it again."
        )
    files = manifest.get("files", {})
    for name, digest in files.items():
        file = folder / name
        if digest is None:  # listed, not pinned (the card, the settings)
            continue
        if not file.is_file() or file_digest(file) != digest:
            raise ValueError(
                f"{file} {'is missing' if not file.is_file() else 'differs from the file its save wrote'} "
                f"({MANIFEST_NAME}): the folder mixes files of different saves or was edited. Save it again, or "
                f"delete {MANIFEST_NAME} if you changed the files on purpose."
            )
    extra = [name for name in checked if name not in files and (folder / name).is_file()]
    if extra:
        raise ValueError(
            f"{folder / extra[0]} was not written by the save that wrote {MANIFEST_NAME}: the folder mixes files "
            f"of different saves. Save it again, or delete {MANIFEST_NAME} if you added the file on purpose."
        )


def _staging_folder(target: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=target, prefix=STAGING_PREFIX))
    (folder / STAGING_MARKER).write_text(str(os.getpid()))
    return folder


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, owned: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield a staging folder; on success its files replace those of `target`, on failure `target` is untouched.

    Files are staged in a hidden `.staging-*` folder inside `target` (so the final moves never cross a file system,
    even when `target` is itself a mount point) and moved in with `os.replace` after everything was written: an
    exception while writing (a full disk, an interrupt) leaves the previous save intact. The moves are bracketed by
    `hf_meta_manifest.json`: marked incomplete before the first, written with every file's SHA-256 after the last,
    so a save interrupted between two moves, or files of two saves mixed, are refused at load
    ([`verify_saved_folder`]) instead of loading silently. One save at a time per folder ([`save_lock`]): a
    concurrent save fails with [`ConcurrentSaveError`]. Staging folders of earlier hf_meta saves that died are
    removed; `.staging-*` folders hf_meta did not create are kept.

    Args:
        target: the folder to save into (created if missing).
        owned: file names this save may remove from `target` when it does not write them this time, if the
            previous save wrote them (its manifest lists them) or, in a folder without a manifest, if only hf_meta
            writes such files ([`HF_META_ONLY_FILES`]). Default: [`HF_META_FILES`]; pass `()` to keep every file.
            The user's files, `checkpoint-*` folders and a model folder's own tokenizer files are always kept.

    Example:
        ```python
        >>> with atomic_directory("out") as staging:
        ...     (staging / "adaptation_config.json").write_text("{}")
        ```
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    owned = HF_META_FILES if owned is None else tuple(owned)
    with save_lock(target):
        for leftover in target.glob(f"{STAGING_PREFIX}*"):  # a dead hf_meta save's (we hold the lock): remove
            if leftover.is_dir() and not leftover.is_symlink() and (leftover / STAGING_MARKER).is_file():
                shutil.rmtree(leftover, ignore_errors=True)
        staging = _staging_folder(target)
        trash = _staging_folder(target)
        try:
            yield staging
            (staging / STAGING_MARKER).unlink()
            written = sorted(staging.iterdir())
            # Every file but the card and the settings (rewritten by `push_to_hub`, edited by users) is pinned.
            digests = {e.name: None if e.name in UNPINNED_FILES else file_digest(e) for e in written if e.is_file()}
            previous = read_manifest(target) if (target / MANIFEST_NAME).is_file() else None
            ours = set(previous.get("files", {})) | set(previous.get("folders", [])) if previous else set()
            removable = {name for name in owned if name in ours or (previous is None and name in HF_META_ONLY_FILES)}
            atomic_write_text(target / MANIFEST_NAME, json.dumps({"complete": False, "files": {}}))
            for entry in written:
                destination = target / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    os.replace(destination, trash / entry.name)  # a rename, then the new folder takes its name
                os.replace(entry, destination)
            names = {entry.name for entry in written}
            for name in removable:
                stale = target / name
                if name not in names and (stale.is_file() or stale.is_symlink()):
                    os.replace(stale, trash / name)
            folders = sorted(entry.name for entry in written if entry.is_dir())
            manifest = {"complete": True, "files": digests, "folders": folders}
            atomic_write_text(target / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that a save finished: its `trainer_state.json` (the Trainer writes
    it last) is there and its hf_meta manifest, when it has one, is complete. Partial ones (a run killed while
    checkpointing) are skipped with a warning; `None` when there is none."""
    from transformers.utils import logging

    folder = Path(output_dir)
    steps = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        manifest = read_manifest(path) if (path / MANIFEST_NAME).is_file() else None
        if (path / "trainer_state.json").is_file() and (manifest is None or manifest.get("complete")):
            return str(path)
        logging.get_logger(__name__).warning(
            f"Skipping {path}: the save that wrote it did not finish (no trainer_state.json, or an incomplete "
            f"{MANIFEST_NAME}); resuming from an earlier checkpoint."
        )
    return None
