"""The intent recipe's meta-training, timed end to end: `recipes/fewshot_intent.py --objective meta` run from an
earlier commit and from this checkout, alternated, on the same machine.

Each run is the recipe as a user launches it (`accelerate launch --config_file recipes/accelerate_configs/cpu.yaml`),
with its own defaults of that commit (the same configuration on both sides: MiniLM, LoRA in the top 3 layers, frozen
layers precomputed, `inner_steps=0`, meta-steps of 4 episodes), validation and checkpoints during training turned off
so that only meta-training is timed. The time is the Trainer's own `train_runtime`; the run is stopped once the
Trainer prints it (the evaluation after training is timed by `recipe_evaluation.py`). The earlier commit is checked out
into a temporary `git worktree` and imported first on `PYTHONPATH`; the worktree is removed afterwards.
Validation accuracy is not compared here: `meta_step_speed.py` scores the same meta-steps with each code path on
held-out domains, paired per episode.

    HF_HUB_OFFLINE=1 python benchmarks/speed/recipe_meta_training.py --before d553fde --rounds 2   # about 30 minutes
    HF_HUB_OFFLINE=1 python benchmarks/speed/recipe_meta_training.py --before d553fde --rounds 1 --max_steps 20 \
        --output outputs/recipe_meta_training_check.json                                           # a quick check
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import code_version, machine

from hf_meta.bench.scripts import write_results
from hf_meta.data import resolve_data_dir
from hf_meta.metrics import mean_ci95

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
# The Trainer's end-of-training log line, e.g. {'train_runtime': '247.3', 'train_samples_per_second': '6.47', ...}
TRAIN_LOG = re.compile(r"\{'train_runtime'[^}]*\}")
CPU_CONFIG = "recipes/accelerate_configs/cpu.yaml"  # one process with every core, as the README's main command
RECIPE_FLAGS = ["--objective", "meta", "--eval_strategy", "no", "--save_strategy", "no"]
RECIPE_FLAGS += ["--load_best_model_at_end", "false", "--report_to", "none"]


def run_recipe(code_dir: Path, args, output_dir: str, objective_flag: bool, extra: list[str]) -> dict:
    """One meta-training run of the recipe in `code_dir`; returns the Trainer's end-of-training metrics."""
    flags = RECIPE_FLAGS if objective_flag else RECIPE_FLAGS[2:]  # before `--objective` existed, meta was the only one
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_CONFIG]
    command += ["recipes/fewshot_intent.py", *flags, "--output_dir", output_dir, "--max_steps", str(args.max_steps)]
    command += ["--data_dir", args.data_dir]  # resolved from this checkout: the worktree has no data folder beside it
    command += extra
    env = {**os.environ, "PYTHONPATH": str(code_dir), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=20)  # the last lines, for the error below
    try:
        for line in process.stdout:
            tail.append(line)
            found = TRAIN_LOG.search(line)
            if found:
                metrics = {key: float(value) for key, value in ast.literal_eval(found.group(0)).items()}
                return metrics
    finally:
        process.terminate()
        process.wait()
    raise RuntimeError(
        f"The recipe in {code_dir} ended without the Trainer's train_runtime; its last lines:\n" + "".join(tail)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="The earlier commit (any name `git rev-parse` takes).")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds of (before, this checkout).")
    parser.add_argument("--max_steps", type=int, default=400, help="Meta-steps per run (the recipe's default).")
    parser.add_argument("--bf16", action="store_true", help="Also run this checkout under `--bf16 --use_cpu`.")
    parser.add_argument("--output", default=str(RESULTS / "recipe_meta_training.json"))
    parser.add_argument("--data_dir", default=None, help="The data folder (default: as the recipes resolve it).")
    args = parser.parse_args()
    args.data_dir = str(Path(resolve_data_dir(args.data_dir)).resolve())
    if args.rounds < 1 or args.max_steps < 1:
        parser.error(f"`--rounds` and `--max_steps` must be at least 1, got {args.rounds} and {args.max_steps}.")
    before = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True, text=True, check=True
    ).stdout.strip()
    arms = ["before", "current"] + (["current, bf16"] if args.bf16 else [])
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="recipe_meta_") as work:
        tree = Path(work) / "before"
        add = ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(tree), before]
        subprocess.run(add, check=True)
        try:
            objective_flag = "--objective" in (tree / "recipes" / "fewshot_intent.py").read_text()
            for round_ in range(args.rounds):
                for arm in arms:
                    code_dir = tree if arm == "before" else ROOT
                    extra = ["--bf16", "true", "--use_cpu", "true"] if arm.endswith("bf16") else []
                    metrics = run_recipe(
                        code_dir,
                        args,
                        str(Path(work) / f"out_{arm}_{round_}"),
                        arm != "before" or objective_flag,
                        extra,
                    )
                    runs[arm].append(metrics)
                    print(f"round {round_}: {arm:<14} {metrics['train_runtime']:7.1f} s "
                          f"{metrics['train_samples_per_second']:6.2f} episodes/s", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)

    episodes = {arm: [r["train_samples_per_second"] for r in rs] for arm, rs in runs.items()}
    summary = []
    for arm in arms:
        mean, ci = mean_ci95(episodes[arm])
        ratios = [a / b for a, b in zip(episodes[arm], episodes["before"])]  # paired by round
        ratio_mean, ratio_ci = mean_ci95(ratios)
        summary.append(
            dict(arm=arm, episodes_per_second=mean, ci95=ci, speedup_vs_before=ratio_mean, speedup_ci95=ratio_ci)
        )
    print(f"\n{'arm':<16}{'episodes/s':>12}{'x before':>10}")
    for row in summary:
        print(f"{row['arm']:<16}{row['episodes_per_second']:>12.2f}{row['speedup_vs_before']:>9.2f}x")
    write_results(
        args.output,
        description=(
            "The intent recipe's meta-training (`--objective meta`, validation and checkpoints off), the Trainer's "
            "train_runtime, at an earlier commit and at this checkout, alternated on the same machine."
        ),
        machine=machine(),
        before=before,
        current=code_version(ROOT),
        max_steps=args.max_steps,
        episodes_per_meta_step=4,
        median_speedup=statistics.median(a / b for a, b in zip(episodes["current"], episodes["before"])),
        summary=summary,
        runs=runs,
    )


if __name__ == "__main__":
    main()
