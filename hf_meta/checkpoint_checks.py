"""Damaged checkpoint files, refused before the Trainer reads them, with the file, what is wrong and the fix.

A resumed run reads several files the `Trainer` writes (`trainer_state.json`, `optimizer.pt`, `scheduler.pt`,
`rng_state*.pth`) besides hf_meta's own. Read damaged, they fail deep inside `torch.load`, `json` or safetensors with
messages that name no file, and `torch.load`'s own suggests `weights_only=False`, which would only unpickle the
damage. [`check_checkpoint`] reads each one's structure first: a JSON object, a safetensors header, a torch archive
whose every member matches its CRC (which also catches flipped bits `torch.load` would load as they are).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from safetensors import safe_open

from .io_utils import MANIFEST_NAME, file_digest, read_manifest

# What `Trainer` saves beside the model as `torch.save` archives (zip files with a CRC per member).
TORCH_ARCHIVES = ("optimizer.pt", "scheduler.pt", "scaler.pt")
JSON_FILES = ("trainer_state.json",)


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Refuse a `checkpoint-N` folder holding a damaged file a resume would read; missing files are left to the
    `Trainer` (it warns or fails on them with their names already).

    Example:
        ```python
        >>> check_checkpoint("out/checkpoint-40")    # ValueError naming e.g. out/checkpoint-40/optimizer.pt
        ```
    """
    folder = Path(folder)
    for name in JSON_FILES:
        path = folder / name
        if path.is_file():
            _check_json(path, folder)
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error types for every malformed header
            raise _damaged(path, folder, f"not a readable safetensors file: {err}") from None
    archives = [folder / name for name in TORCH_ARCHIVES] + sorted(folder.glob("rng_state*.pth"))
    for path in archives:
        if path.is_file():
            _check_torch_archive(path, folder)
    # hf_meta's own files (the adapter, the tokenizer) carry their SHA-256 in the manifest: a flipped bit in a
    # tensor keeps the header valid and would load as a silently different adapter.
    manifest = read_manifest(folder) or {}
    for name, digest in manifest.get("files", {}).items():
        path = folder / name
        if digest is not None and path.is_file() and file_digest(path) != digest:
            raise _damaged(
                path, folder, f"its SHA-256 differs from the one {MANIFEST_NAME} recorded when it was saved"
            )


def _check_json(path: Path, folder: Path) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise _damaged(path, folder, f"not valid JSON: {type(err).__name__}: {err}") from None
    if not isinstance(values, dict):
        raise _damaged(path, folder, f"a JSON {type(values).__name__}, not the object the Trainer writes")


def _check_torch_archive(path: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()  # reads every member and compares its CRC
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # truncated, overwritten, not a zip
        raise _damaged(path, folder, f"not a complete `torch.save` archive ({type(err).__name__}: {err})") from None
    if bad_member is not None:
        raise _damaged(path, folder, f"its member {bad_member} does not match its CRC (flipped or lost bytes)")


def _damaged(path: Path, folder: Path, what: str) -> ValueError:
    earlier = _earlier_checkpoint(folder)
    instead = (
        f"resume from the checkpoint before it (`resume_from_checkpoint={str(earlier)!r}`), or delete {folder} so "
        "that `resume_from_checkpoint=True` takes the newest one left"
        if earlier is not None
        else f"delete {folder} and train from the start (it is the only checkpoint)"
    )
    return ValueError(
        f"{path} is damaged: {what}. The checkpoint cannot be resumed from; {instead}. Do not load it with "
        "`weights_only=False`: the file's bytes are wrong, not its format."
    )


def _earlier_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-M` beside `folder` (a `checkpoint-N`) with `M < N`, or `None`."""
    prefix, _, step = folder.name.rpartition("-")
    if not step.isdigit():
        return None
    earlier = [
        (int(path.name.rpartition("-")[2]), path)
        for path in folder.parent.glob(f"{prefix}-*")
        if path.is_dir() and path.name.rpartition("-")[2].isdigit() and int(path.name.rpartition("-")[2]) < int(step)
    ]
    return max(earlier)[1] if earlier else None
