"""Meta-training speed of the intent recipe's configuration: episodes per micro-batch, and the head fit.

Three ways to run the same meta-steps of 4 episodes (the intent recipe's configuration: MiniLM, LoRA in the top 3
layers, frozen layers precomputed per sentence, `inner_steps=0`, 10-20-way 1-5-shot 3-query episodes of CLINC150 +
HWU64 with a fifth of their domains held out), on the same episodes in the same order:

    accumulated          one episode per micro-batch, 4 accumulation steps, each head fitted by 100 L-BFGS iterations
    batched              4 episodes per micro-batch: one support pass, one query pass and one backward per meta-step
    batched, Newton      the same, each head fitted by Newton-CG to its tolerance (`head_solver="newton"`)
    batched, Newton, bf16   the same under the Trainer's `bf16=True` (not in the default arms: it pays only where the
                         hardware multiplies in bf16, and on a CPU without bf16 units it measures torch's emulation)

Each arm meta-trains from the same initial adapter and is then scored on the same validation episodes of the held-out
domains (never a target's test set), with its own head solver; the accuracy differences to the first arm are paired
per validation episode, and the evaluation is timed (the first arm one episode per encoder call, the others 8, as
`MetaTrainer.evaluate` runs them). The head fit is timed apart for each solver (CPU time of one thread, on the support
embeddings of the same episodes), Newton-CG both one episode at a time and 4 episodes in one solve (as a meta-step
fits them), with the tensor operations and host syncs it dispatches and each head's distance to the optimum
(Newton-CG to a 1e-12 relative gradient). Each arm's whole meta-step (encoder passes, head fits, backward, AdamW) is
counted the same way on a separate run of `--count_steps` meta-steps: on a GPU every operation is at least one kernel
launch, and with episodes this small those launches and syncs, not the FLOPs, bound the meta-steps per second.

    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_step_speed.py                  # about 8 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_step_speed.py --meta_steps 4 --eval_episodes 4 --output s.json
    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_step_speed.py --arms "batched, Newton" "batched, Newton, bf16" \
        --head_fit_episodes 0 --output benchmarks/speed/results/meta_step_speed_bf16.json
    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_step_speed.py --meta_steps 200 --arms "batched, Newton" \
        "batched, Newton, bf16" --head_fit_episodes 0 --output benchmarks/speed/results/meta_step_speed_bf16_200.json

On a GPU the results also hold each arm's meta-steps per second and the peak GPU memory of its meta-training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import machine
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback, set_seed
from transformers.utils import logging

from hf_meta import MetaTrainer, MetaTrainingArguments, meta_trainer
from hf_meta.bench.protocols import deduplicated, hold_out_domains, intent_pools, mixed_episodes
from hf_meta.bench.scripts import DEFAULT_MODEL, load_encoder, lora_config, write_results
from hf_meta.data import resolve_data_dir
from hf_meta.inner_loop import fit_head, initial_head
from hf_meta.meta_trainer import EVAL_EPISODES_PER_PASS
from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ["clinc150", "hwu64"]
# episodes per micro-batch, accumulation steps, head solver, bf16
ARMS = {
    "accumulated": (1, 4, "lbfgs", False),
    "batched": (4, 1, "lbfgs", False),
    "batched, Newton": (4, 1, "newton", False),
    "batched, Newton, bf16": (4, 1, "newton", True),
}
DEFAULT_ARMS = ["accumulated", "batched", "batched, Newton"]


def build_trainer(arm: str, args, train_episodes, max_steps: int, callbacks=None) -> MetaTrainer:
    """The arm's trainer, from the same initial adapter (seed 0) on the same episodes in the same order."""
    batch_size, accumulation, solver, bf16 = ARMS[arm]
    set_seed(0)
    model, tokenizer = load_encoder(args.model)
    training_args = MetaTrainingArguments(
        output_dir=str(Path(args.work_dir) / arm),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        inner_steps=0,
        head_solver=solver,
        bf16=bf16,
        use_cpu=bf16 and not torch.cuda.is_available(),  # transformers refuses bf16 on CPU without it
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        seed=0,
    )
    return MetaTrainer(
        model=model,
        args=training_args,
        peft_config=lora_config(model, 3),
        train_dataset=train_episodes,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def meta_train(arm: str, args, train_episodes, validation_episodes) -> dict:
    batch_size, accumulation, solver, bf16 = ARMS[arm]
    trainer = build_trainer(arm, args, train_episodes, args.meta_steps)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # the GPU measure: meta-steps/s and the memory they hold on the device (None on a CPU)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    # "accumulated" evaluates one episode per encoder call, as evaluation ran before episodes shared their passes
    per_pass = 1 if arm == "accumulated" else EVAL_EPISODES_PER_PASS
    meta_trainer.EVAL_EPISODES_PER_PASS = per_pass
    try:
        start = time.perf_counter()
        output = trainer.predict(validation_episodes)
        eval_seconds = time.perf_counter() - start
    finally:
        meta_trainer.EVAL_EPISODES_PER_PASS = EVAL_EPISODES_PER_PASS
    sizes = [len(row["query_label"]) for row in validation_episodes]
    correct = (output.predictions == output.label_ids).astype(float)
    per_episode = [float(chunk.mean()) for chunk in np.split(correct, np.cumsum(sizes)[:-1])]
    episodes = args.meta_steps * 4
    return {
        "arm": arm,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": accumulation,
        "head_solver": solver,
        "bf16": bf16,
        "episodes": episodes,
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2),  # all threads; less sensitive than wall time to other load
        "episodes_per_second": round(episodes / seconds, 3),
        "meta_steps_per_second": round(args.meta_steps / seconds, 3),
        "peak_gpu_memory_mb": None if gpu_mb is None else round(gpu_mb, 1),
        "eval_episodes_per_pass": per_pass,
        "eval_seconds": round(eval_seconds, 2),
        "val_accuracy": float(np.mean(per_episode)),
        "val_episode_accuracies": per_episode,
    }


class OperationCount(TorchDispatchMode):
    """Counts the tensor operations dispatched inside its `with` block (after autograd, as kernels run), and the
    reads of a tensor's value by Python (`bool(...)`, `.item()`: a host sync on a GPU)."""

    operations = 0
    host_syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operations += 1
        self.host_syncs += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class CountedSteps(TrainerCallback):
    """Counts the tensor operations and host syncs of every meta-step after the first `skip` (a whole optimizer
    step: the episodes' encoder passes, head fits, backward and the AdamW update; data loading is outside it)."""

    def __init__(self, skip: int):
        self.skip, self.counts, self._mode = skip, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.skip:
            self._mode = OperationCount()
            self._mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.counts.append((self._mode.operations, self._mode.host_syncs))
            self._mode = None


def operations_per_meta_step(arm: str, args, train_episodes) -> dict:
    """Tensor operations and host syncs per meta-step of `arm`, counted on a separate short run (counting slows the
    dispatch the timed run measures). On a GPU each operation is at least one kernel launch, so with small episodes
    these counts, not the FLOPs, bound the meta-steps per second."""
    counter = CountedSteps(skip=1)  # the first step also warms up what runs once
    build_trainer(arm, args, train_episodes, args.count_steps + 1, callbacks=[counter]).train()
    operations, syncs = np.asarray(counter.counts, dtype=float).T
    return {
        "ops_per_meta_step": round(float(operations.mean())),
        "host_syncs_per_meta_step": round(float(syncs.mean())),
    }


def head_fit_times(args, episodes) -> dict:
    """CPU milliseconds per head fit (one thread) on the recipe's episodes for each solver, and each head's distance
    to the optimum (the tolerance every comparison of meta-gradients on real episodes lives with). `newton, per
    meta-batch` fits the heads of 4 consecutive episodes in one padded solve, as a meta-step does. `ops_per_fit` counts
    the tensor operations a fit dispatches (one device kernel each on a GPU, whose launches and host syncs bound
    these small solves there): a count that does not depend on the machine it is measured on."""
    from hf_meta import FewShotClassifier
    from hf_meta.head_solver import newton_heads
    from hf_meta.inner_loop import fit_separate_heads
    from hf_meta.label_names import label_phrase

    clf = FewShotClassifier.from_pretrained(args.model)
    config = clf.adaptation_config
    fit = dict(scale=config.logit_scale, l2=config.head_l2, head_prior=config.head_prior)
    problems = []  # (embeddings, labels, prior, optimum) per episode
    for row in episodes.select(range(min(args.head_fit_episodes, len(episodes)))):
        count = len(row["class_names"])
        texts = list(row["support_text"]) + [label_phrase(name) for name in row["class_names"]]
        embeddings = torch.as_tensor(clf.embed(texts), dtype=torch.float32)
        labels = torch.cat([torch.tensor(row["support_label"]), torch.arange(count)])
        prior = initial_head(embeddings, labels, count, config.head_init, bias=config.head_bias)
        optimum = newton_heads(
            embeddings, labels, prior[None], torch.ones(1, len(labels)), config.logit_scale, config.head_l2,
            config.head_prior, max_steps=200, tolerance=1e-12,
        )[0]  # fmt: skip
        problems.append((embeddings, labels, prior, optimum))

    def distance(head, optimum):
        head, optimum = head.double().clone(), optimum.clone()
        head[:, -1] -= head[:, -1].mean()  # a common bias shift changes no probability
        optimum[:, -1] -= optimum[:, -1].mean()
        return float((head - optimum).abs().max())

    solvers = ("lbfgs", "newton", "newton, per meta-batch")
    seconds, distances = {s: [] for s in solvers}, {s: [] for s in solvers}
    ops, syncs = {s: [] for s in solvers}, {s: [] for s in solvers}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for solver in solvers[:2]:
            for embeddings, labels, prior, optimum in problems:
                start = time.process_time()
                head = fit_head(embeddings, labels, prior, steps=config.head_fit_steps, solver=solver, **fit)
                seconds[solver].append(time.process_time() - start)
                distances[solver].append(distance(head, optimum))
                with OperationCount() as counted:  # a second fit: counting slows the dispatch it would time
                    fit_head(embeddings, labels, prior, steps=config.head_fit_steps, solver=solver, **fit)
                ops[solver].append(counted.operations)
                syncs[solver].append(counted.host_syncs)
        solver = solvers[2]
        for first in range(0, len(problems), 4):
            group = problems[first : first + 4]
            start = time.process_time()
            heads = fit_separate_heads(
                [p[0] for p in group], [p[1] for p in group], [p[2] for p in group], steps=config.head_fit_steps,
                sample_weights=[torch.ones(len(p[1])) for p in group], **fit,
            )  # fmt: skip
            seconds[solver] += [(time.process_time() - start) / len(group)] * len(group)
            distances[solver] += [distance(head, p[3]) for head, p in zip(heads, group)]
            with OperationCount() as counted:
                fit_separate_heads(
                    [p[0] for p in group], [p[1] for p in group], [p[2] for p in group], steps=config.head_fit_steps,
                    sample_weights=[torch.ones(len(p[1])) for p in group], **fit,
                )  # fmt: skip
            ops[solver] += [counted.operations / len(group)] * len(group)
            syncs[solver] += [counted.host_syncs / len(group)] * len(group)
    finally:
        torch.set_num_threads(threads)
    return {
        solver: {
            "cpu_ms_per_fit": round(1000 * float(np.mean(seconds[solver])), 1),
            "ops_per_fit": round(float(np.mean(ops[solver])), 1),
            "host_syncs_per_fit": round(float(np.mean(syncs[solver])), 1),
            "max_abs_distance_to_optimum": max(distances[solver]),
            "median_abs_distance_to_optimum": float(np.median(distances[solver])),
        }
        for solver in solvers
    } | {"examples_per_fit": [len(p[0]) for p in problems]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--meta_steps", type=int, default=60)
    parser.add_argument("--eval_episodes", type=int, default=40)
    parser.add_argument("--head_fit_episodes", type=int, default=40, help="0: no head-fit timing.")
    parser.add_argument(
        "--count_steps", type=int, default=4, help="Meta-steps whose operations are counted per arm (0: none)."
    )
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS), help="Paired with the first.")
    parser.add_argument("--work_dir", default="outputs/meta_step_speed")
    parser.add_argument("--output", default=str(RESULTS / "meta_step_speed.json"))
    args = parser.parse_args()
    logging.set_verbosity_warning()

    data_dir = resolve_data_dir(args.data_dir)
    pools = [deduplicated(pool) for pool in intent_pools(SOURCES, data_dir)]
    pools, validation_pools = hold_out_domains(pools, SOURCES, 0.2, data_dir, seed=0)
    shape = dict(n_way=(10, 20), k_shot=(1, 5), num_query=3)
    train_episodes = mixed_episodes(pools, args.meta_steps * 4, seed=0, **shape)
    validation_episodes = mixed_episodes(validation_pools, args.eval_episodes, n_way=10, k_shot=5, num_query=3, seed=1)

    heads = head_fit_times(args, train_episodes) if args.head_fit_episodes else {}
    arms = [meta_train(arm, args, train_episodes, validation_episodes) for arm in args.arms]
    if args.count_steps:
        for arm in arms:
            arm |= operations_per_meta_step(arm["arm"], args, train_episodes)
    before = arms[0]
    paired = {}
    for arm in arms[1:]:
        diffs = np.subtract(arm["val_episode_accuracies"], before["val_episode_accuracies"])
        paired[arm["arm"]] = {"mean": float(diffs.mean()), "ci95": mean_ci95(list(diffs))[1]}
    write_results(
        args.output,
        machine=machine(),
        settings={"meta_steps": args.meta_steps, "episodes_per_meta_step": 4, "sources": SOURCES,
                  "train": "10-20-way 1-5-shot 3-query, held-out domains excluded",
                  "validation": f"{args.eval_episodes} 10-way 5-shot 3-query episodes of the held-out domains"},
        head_fit=heads,
        arms=arms,
        **{f"paired_val_accuracy_minus_{args.arms[0].replace(', ', '_').replace(' ', '_')}": paired},
    )  # fmt: skip
    print(
        f"\n{'arm':<18}{'episodes/s':>12}{'speed-up':>10}{'CPU s':>8}{'val acc':>9}{'paired vs first':>18}"
        f"{'eval s':>8}"
    )
    for arm in arms:
        speedup = arm["episodes_per_second"] / before["episodes_per_second"]
        diff = paired.get(arm["arm"])
        versus = f"{100 * diff['mean']:+.2f} ± {100 * diff['ci95']:.2f}" if diff else "-"
        print(
            f"{arm['arm']:<18}{arm['episodes_per_second']:>12.2f}{speedup:>9.2f}x{arm['train_cpu_seconds']:>8.0f}"
            f"{100 * arm['val_accuracy']:>9.2f}{versus:>18}{arm['eval_seconds']:>8.1f}"
        )
    for arm in arms:
        if "ops_per_meta_step" in arm:
            print(
                f"{arm['arm']}: {arm['ops_per_meta_step']} tensor operations and {arm['host_syncs_per_meta_step']} "
                "host syncs per meta-step"
            )
    for solver, fits in heads.items():
        if solver == "examples_per_fit":
            continue
        print(
            f"head fit, {solver}: {fits['cpu_ms_per_fit']:.1f} CPU ms, {fits['ops_per_fit']:.0f} tensor operations "
            f"and {fits['host_syncs_per_fit']:.0f} host syncs per episode (one thread); distance to the "
            f"optimum: max {fits['max_abs_distance_to_optimum']:.1e}, "
            f"median {fits['median_abs_distance_to_optimum']:.1e}"
        )


if __name__ == "__main__":
    main()
