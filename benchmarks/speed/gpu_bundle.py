"""What a lent GPU machine needs for `gpu_check.sh`, packed into one folder that travels with the working tree.

The device machine reaches nothing outside itself and is sent the checkout alone (64 MiB at most), so the model, the
data and the Python packages its image lacks must travel in an ignored folder named in the call's `carry`:

    model/    all-MiniLM-L6-v2 with its weights stored in float16 (half the bytes; `--restore` casts them back to
              float32 on the device; the rounding moves no speed, only accuracy by float noise)
    data/     the collections the intent recipe meta-trains on (CLINC150, HWU64), their `MANIFEST.sha256` lines
              beside them, so `load_collection` checks every file it reads
    wheels/   `datasets`, `evaluate` and their pure-Python needs that the device image lacks, for Python 3.12

Build it here (once; it needs the package registry), then run the check in one call:

    python benchmarks/speed/gpu_bundle.py                       # writes outputs/gpu_bundle/ (about 50 MB)
    # device `run`, carry ["outputs/gpu_bundle"]:  bash benchmarks/speed/gpu_check.sh

`--restore MODEL_DIR OUT_DIR` (what `gpu_check.sh` calls on the device) writes the float32 model.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hf_meta.bench.scripts import DEFAULT_MODEL  # noqa: E402
from hf_meta.data import resolve_data_dir  # noqa: E402
from hf_meta.data.collections import MANIFEST_NAME, _manifest  # noqa: E402
from hf_meta.modeling import resolve_model_path  # noqa: E402

SOURCES = ("clinc150", "hwu64")
# Files of a collection folder that no reader opens (CLINC150's other variants), left behind to stay under the limit.
UNREAD = ("data_imbalanced.json", "data_oos_plus.json", "data_small.json")
# The device image has pyarrow, pandas, fsspec, xxhash, tqdm and huggingface_hub; these are what it lacks.
WHEELS = ("datasets==5.2.0", "evaluate==0.4.6", "dill==0.4.1", "multiprocess==0.70.19")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT = 64 * 2**20


def copy_model(source: Path, target: Path, dtype: torch.dtype) -> None:
    """Every file of the model folder, the floating-point safetensors weights cast to `dtype` (float16 to travel,
    float32 back); written beside `target`, then renamed, so a failed copy never leaves half a folder."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in source.iterdir():
        if path.name == "model.safetensors":
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
            save_file(weights, partial / path.name)
        elif path.is_file():
            shutil.copy2(path, partial / path.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def pack_data(data_dir: Path, target: Path) -> None:
    """The source collections and the manifest lines of the files copied (read by the loader's own parser)."""
    for source in SOURCES:
        shutil.copytree(data_dir / source, target / source, ignore=shutil.ignore_patterns(*UNREAD))
    manifest = _manifest(data_dir) or {}
    kept = [
        f"{digest}  ./{name}"
        for name, digest in manifest.items()
        if Path(name).parts[0] in SOURCES and Path(name).name not in UNREAD
    ]
    if kept:
        (target / MANIFEST_NAME).write_text("\n".join(kept) + "\n")


def pack_wheels(target: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(target)]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + list(WHEELS), check=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "outputs" / "gpu_bundle"))
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--restore", nargs=2, metavar=("MODEL_DIR", "OUT_DIR"), help="Write the float32 model.")
    args = parser.parse_args(argv)
    if args.restore:
        copy_model(Path(args.restore[0]), Path(args.restore[1]), torch.float32)
        print(f"wrote {args.restore[1]}")
        return
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:  # beside the output: the rename stays on one disk
        partial = Path(tmp) / "bundle"
        copy_model(Path(resolve_model_path(DEFAULT_MODEL)), partial / "model", torch.float16)
        pack_data(Path(resolve_data_dir(args.data_dir)), partial / "data")
        pack_wheels(partial / "wheels")
        size = folder_bytes(partial)
        if size > CARRY_LIMIT - 8 * 2**20:  # the checkout itself travels too
            raise SystemExit(f"the bundle is {size / 2**20:.1f} MiB: with the checkout it would pass 64 MiB.")
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    print(f"wrote {output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
