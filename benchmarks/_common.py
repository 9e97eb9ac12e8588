"""What the benchmark scripts share: arguments, machine info, timing, the speed set-up, results files and tables.

Data folder, protocols, method comparison and baselines come from `hf_meta.bench`; this module only holds what is
particular to the scripts under `benchmarks/` (`accuracy/`, `speed/`, `ablations/`). Each script imports it as
`_common`, run from the repository root as `python benchmarks/<group>/<script>.py`: Python puts the script's own
folder on `sys.path`, so one line of each script, before its imports, puts this folder there too:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

Each script's default results file is in its own folder's `results/` (`RESULTS / "<name>.json"`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from hf_meta.bench.protocols import intent_episodes
from hf_meta.bench.scripts import DEFAULT_MODEL, MODEL_ALIASES, load_encoder, lora_config, prepare_model, write_results
from hf_meta.data import resolve_data_dir
from hf_meta.io_utils import atomic_write_text

# The scripts print their own tables; progress bars of every dataset map and weight load would bury them.
datasets.disable_progress_bars()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*pin_memory.*")


# ---- Arguments and machine ----------------------------------------------------------------------------------


def make_parser(doc: str, output: str | os.PathLike, model_and_data: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every script takes: `--output` (default `output`, the script's file under its
    folder's `results/`) and `--quick`, plus `--model` and `--data_dir` unless `model_and_data` is false; the
    docstring is the help text."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(output), help="Results JSON (default: %(default)s).")
    parser.add_argument("--quick", action="store_true", help="Small settings: a smoke run, not a measurement.")
    if model_and_data:
        parser.add_argument(
            "--model", default=DEFAULT_MODEL, help="Encoder: Hub id, folder, or a short name (`minilm`, `mpnet`)."
        )
        parser.add_argument(
            "--data_dir", default=None, help="Raw collections; default $HF_META_DATA_DIR, else ../shared/data."
        )
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any]) -> argparse.Namespace:
    """Parse `argv`; with `--quick`, `quick` replaces the defaults (options given explicitly still win)."""
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**quick)
    args = parser.parse_args(argv)
    if getattr(args, "model", None):
        args.model = prepare_model(args.model)  # a short name becomes its Hub id (all-mpnet-base-v2 assembled)
        if args.model != DEFAULT_MODEL and args.output == parser.get_default("output"):
            # Results files merge their parts, so another encoder writes its own file (`speed_mpnet.json`, ...)
            output = Path(args.output)
            args.output = str(output.with_name(f"{output.stem}_{model_tag(args.model)}{output.suffix}"))
    return args


def model_tag(model: str) -> str:
    """A short name for `model` in file names: its alias (`mpnet`), else its last path component."""
    aliases = {hub_id: alias for alias, hub_id in MODEL_ALIASES.items()}
    return aliases.get(model) or "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).name)


def data_dir(args: argparse.Namespace) -> Path:
    """The data folder, decided in one place (`hf_meta.data.resolve_data_dir`)."""
    return resolve_data_dir(args.data_dir)


def machine() -> str:
    """The machine a result was measured on, recorded in every results file."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def code_version(path: str | os.PathLike) -> str:
    """The commit of the checkout `path` is in, `+changes` when its tracked files differ from it."""
    import subprocess

    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", str(path), *command], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


# ---- Timing and memory --------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (a high-water mark: measure in a fresh process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    """`fn(*args)` in a newly spawned interpreter, so that its peak RSS counts only its own allocations.

    `fn` must be a module-level function of the calling script; it returns a JSON-able dict.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---- Meta-training set-up for the speed scripts -------------------------------------------------------------


def speed_setup(args, n_way=5, k_shot=5, num_query=5, num_episodes=8, seed=0, top_layers=None):
    """`(model, tokenizer, lora_config, episodes)`: the encoder and N-way K-shot CLINC150 training episodes."""
    model, tokenizer = load_encoder(args.model)
    episodes = intent_episodes(
        ["clinc150"], data_dir(args), num_episodes, n_way=n_way, k_shot=k_shot, num_query=num_query, seed=seed
    )
    return model, tokenizer, lora_config(model, top_layers), episodes


def make_trainer(model, tokenizer, lora, episodes, name: str, max_length: int = 64, **kwargs):
    """A `MetaTrainer` that meta-trains one episode per step over `episodes`.

    The head is the prototype head adapted by SGD only (`head_fit_steps=0`) unless `kwargs` say otherwise: the bare
    passes of `speed/speed_overhead.py` and the naive reference of `speed/speed_naive.py` implement that algorithm,
    so the ratios compare like with like.
    """
    from hf_meta import MetaTrainer, MetaTrainingArguments

    kwargs.setdefault("head_fit_steps", 0)
    if kwargs["head_fit_steps"] == 0:
        kwargs.setdefault("head_init", "prototypes")
        kwargs.setdefault("head_bias", False)
    kwargs.setdefault("precompute_frozen_states", False)  # these scripts time the per-episode paths
    args = MetaTrainingArguments(
        output_dir=f"outputs/{name}",
        max_steps=len(episodes),
        gradient_accumulation_steps=1,
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        save_strategy="no",
        max_length=max_length,
        **kwargs,
    )
    return MetaTrainer(model=model, args=args, peft_config=lora, train_dataset=episodes, processing_class=tokenizer)


def trainer_seconds_per_episode(trainer, warmup: int = 1) -> list[float]:
    """Wall seconds of each step of `trainer.train()` (one episode per step), the first `warmup` dropped."""
    from transformers import TrainerCallback

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    trainer.add_callback(Timer())
    trainer.train()
    return times[warmup:]


# ---- Results ------------------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, **content: Any) -> None:
    """Write a results file atomically, with the command line and the machine recorded."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_results(path, machine=machine(), **content)
    print(f"\nwrote {path}")


def merge_json(
    path: str | os.PathLike, part: str, content: dict, summary: dict | None = None, keep_part: bool = False
) -> dict:
    """Replace `part` of the results file at `path` (other parts are kept) and set its top-level `summary` keys.

    `part` records the command line and the machine it was measured with; with `keep_part`, `content` updates the
    part instead of replacing it. Returns the whole file's content.
    """
    path = Path(path)
    results = json.loads(path.read_text()) if path.is_file() else {}
    previous = results.get(part, {}) if keep_part else {}
    results[part] = {**previous, **content, "command": " ".join(["python", *sys.argv]), "machine": machine()}
    results.update(summary or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2))
    print(f"\nwrote part {part!r} of {path}")
    return results


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str | None = None) -> None:
    """Print `rows` (dicts) as a plain-text table of `columns`; floats with 3 decimals, `None` as n/a."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  ".join(value.rjust(width) for value, width in zip(line, widths)))
