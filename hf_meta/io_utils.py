"""Crash-safe writes: a reader sees the previous file or the new one, never half of one."""

from __future__ import annotations

import contextlib
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
)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, owned: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield a staging folder; on success its files replace those of `target`, on failure `target` is untouched.

    Files are staged in a hidden `.staging-*` folder inside `target` (so the final moves never cross a file system,
    even when `target` is itself a mount point) and moved in with `os.replace`, one by one, after everything was
    written: an exception while writing (a full disk, an interrupt) leaves the previous save intact. Staging folders
    left by an interrupted save are removed at the next save.

    Args:
        target: the folder to save into (created if missing).
        owned: file names this save owns in `target`: those not written this time are removed with the swap.
            Default: [`HF_META_FILES`]; pass `()` to keep every file. Entries that are neither written nor owned
            (e.g. `checkpoint-*` folders, the user's files) are always kept.

    Example:
        ```python
        >>> with atomic_directory("out") as staging:
        ...     (staging / "adaptation_config.json").write_text("{}")
        ```
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    owned = HF_META_FILES if owned is None else tuple(owned)
    for leftover in target.glob(f"{STAGING_PREFIX}*"):  # from a save that was killed before its cleanup
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=STAGING_PREFIX))
    trash = Path(tempfile.mkdtemp(dir=target, prefix=STAGING_PREFIX))
    try:
        yield staging
        written = sorted(staging.iterdir())
        for entry in written:
            destination = target / entry.name
            if destination.is_dir() and not destination.is_symlink():
                os.replace(destination, trash / entry.name)  # a rename, then the new folder takes its name
            os.replace(entry, destination)
        names = {entry.name for entry in written}
        for name in owned:
            stale = target / name
            if name not in names and (stale.is_file() or stale.is_symlink()):
                os.replace(stale, trash / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
