"""Speed and memory of meta-training and adaptation, against the compute limit and a naive implementation.

Every ratio is measured within one run on one machine (medians over repeats); memory is the peak RSS of a fresh
subprocess per method, so one method's allocations never count against another's.

- `overhead_ratio`: seconds per meta-training episode of `MetaTrainer` / seconds of exactly the forward and backward
  passes that episode needs (inner steps on the support set + one query pass), run bare on pre-tokenised tensors.
- `naive_speedup`, `naive_peak_rss_ratio`: a straightforward first-order MAML (deep-copy the model per task,
  re-tokenise every step, `loss.backward()` and `optimizer.step()` on the copy) against `MetaTrainer`.
- `top_layer_cache_speedup`: LoRA on the top 2 layers, with the frozen-layer cache against without it; beside it
  the all-layers setting, and fresh-adapter accuracy on held-out episodes for both placements.
- `adapt_seconds_77x5`: `FewShotClassifier.fit` on BANKING77's 385 labelled examples with LoRA in every layer, and
  `adapt_seconds_77x5_top3` with LoRA in the top 3 layers (cache on), each with its test accuracy; SetFit's
  training time at its defaults beside them if the optional `setfit` extra is installed (about 20 minutes here).
- `two_process_speedup`: meta-training throughput under `accelerate launch` with 2 processes against 1.
- scaling: seconds per episode as N, K and the sequence length grow.

    python benchmarks/speed.py            # about 15 minutes on 2 CPU cores
    python benchmarks/speed.py --quick    # about 5 minutes
    python benchmarks/speed.py --parts adapt --no_setfit   # rerun one part, merged into the existing JSON

Results go to `benchmarks/results/speed.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DATA_DIR = str(HERE.parents[1] / "shared" / "data")
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


# ---- Shared set-up -------------------------------------------------------------------------------------------


def load_episodes(n_way=5, k_shot=5, num_query=5, num_episodes=8, seed=0):
    from hf_meta import build_episodes, load_collection

    clinc = load_collection("clinc150", DATA_DIR)["train"]
    return build_episodes(clinc, n_way=n_way, k_shot=k_shot, num_query=num_query, num_episodes=num_episodes, seed=seed)


def lora_config(model, top_layers=None):
    """hf_meta's default LoRA for `model`, on every layer or only on the top `top_layers`."""
    from hf_meta.modeling import default_lora_config

    lora = default_lora_config(model.config.model_type)
    if top_layers:
        layers = model.config.num_hidden_layers
        lora.layers_to_transform = list(range(layers - top_layers, layers))
    return lora


def load(n_way=5, k_shot=5, num_query=5, num_episodes=8, seed=0, top_layers=None):
    from transformers import AutoModel, AutoTokenizer

    from hf_meta.modeling import resolve_model_path

    path = resolve_model_path(MODEL_ID)
    model = AutoModel.from_pretrained(path)
    return (
        model,
        AutoTokenizer.from_pretrained(path),
        lora_config(model, top_layers),
        load_episodes(n_way, k_shot, num_query, num_episodes, seed),
    )


def make_trainer(model, tokenizer, lora, episodes, output_dir, max_length=64, **kwargs):
    """A `MetaTrainer` over `episodes`. The head is the prototype head adapted by SGD only (`head_fit_steps=0`)
    unless `kwargs` say otherwise: the bare passes and the naive reference implement that algorithm, so ratios
    compare like with like; `part_overhead` times the fitted head separately."""
    from hf_meta import MetaTrainer, MetaTrainingArguments

    kwargs.setdefault("head_fit_steps", 0)

    args = MetaTrainingArguments(
        output_dir=output_dir,
        max_steps=len(episodes),
        gradient_accumulation_steps=1,
        report_to="none",
        disable_tqdm=True,
        logging_steps=10_000,
        max_length=max_length,
        **kwargs,
    )
    return MetaTrainer(model=model, args=args, peft_config=lora, train_dataset=episodes, processing_class=tokenizer)


def trainer_seconds_per_episode(trainer, warmup: int = 1) -> list[float]:
    """Per-episode wall time of `MetaTrainer.train()` from a callback (the first `warmup` steps dropped)."""
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- Parts (each also runnable alone in a fresh process) -----------------------------------------------------


def part_overhead(args) -> dict:
    """MetaTrainer seconds per episode against the bare passes, in two alternating rounds."""
    from transformers import AutoModel

    from hf_meta.adaptation import EpisodeCollator, split_episode
    from hf_meta.modeling import meta_parameters, resolve_model_path

    def embed(batch):
        hidden = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    # Two rounds of (trainer, bare), pooled: whichever runs first on a cold process would otherwise look slower.
    per_episode, bare = [], []
    for _ in range(2):
        model, tokenizer, lora, episodes = load(num_episodes=args.episodes + 1)
        trainer = make_trainer(model, tokenizer, lora, episodes, "outputs/bench_overhead")
        per_episode += trainer_seconds_per_episode(trainer)
        peft_model = trainer.model.eval()
        params = list(meta_parameters(peft_model).values())
        collator = EpisodeCollator(tokenizer, 64)
        steps = trainer.args.inner_steps
        for row in episodes.select(range(1, len(episodes))):
            batch = collator([row])  # tokenised outside the timed region
            support, query = split_episode(batch, "support"), split_episode(batch, "query")
            head = torch.randn(int(batch["num_classes"]), 384, requires_grad=True)
            start = time.perf_counter()
            for _ in range(steps):
                loss = F.cross_entropy(20 * embed(support) @ head.T, support["labels"])
                torch.autograd.grad(loss, [*params, head])
            loss = F.cross_entropy(20 * embed(query) @ head.T, query["labels"])
            torch.autograd.grad(loss, params)
            bare.append(time.perf_counter() - start)
    trainer_s, bare_s = statistics.median(per_episode), statistics.median(bare)
    model = AutoModel.from_pretrained(resolve_model_path(MODEL_ID))
    fitted = make_trainer(model, tokenizer, lora_config(model), episodes, "outputs/bench_overhead", head_fit_steps=100)
    return {
        "trainer_seconds_per_episode_fitted_head": statistics.median(trainer_seconds_per_episode(fitted)),
        "trainer_seconds_per_episode": trainer_s,
        "bare_seconds_per_episode": bare_s,
        "overhead_ratio": trainer_s / bare_s,
        "episodes": len(bare),
        "peak_rss_mb": peak_rss_mb(),
    }


def part_hf_meta(args) -> dict:
    model, tokenizer, lora, episodes = load(num_episodes=args.episodes + 1)
    times = trainer_seconds_per_episode(make_trainer(model, tokenizer, lora, episodes, "outputs/bench_hf_meta"))
    return {"seconds_per_episode": statistics.median(times), "peak_rss_mb": peak_rss_mb()}


def part_naive(args) -> dict:
    """The reference first-order MAML many tutorials write: deepcopy per task, tokenise per step, .backward()."""
    from peft import get_peft_model

    model, tokenizer, lora, episodes = load(num_episodes=args.episodes + 1)
    meta = get_peft_model(model, lora)
    meta_params = [p for p in meta.parameters() if p.requires_grad]
    outer = torch.optim.Adam(meta_params, lr=1e-3)
    times = []
    for row in episodes:
        start = time.perf_counter()
        learner = copy.deepcopy(meta)
        learner.eval()
        inner = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.05)

        def forward(texts, learner=learner):
            batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = learner(**batch)[0]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

        n = len(row["class_names"])
        labels = torch.tensor(row["support_label"])
        with torch.no_grad():
            embeddings = forward(row["support_text"])
            head = torch.stack([embeddings[labels == c].mean(0) for c in range(n)])
        head = F.normalize(head, dim=-1).requires_grad_()
        inner.add_param_group({"params": [head]})
        for _ in range(5):
            inner.zero_grad()
            F.cross_entropy(20 * forward(row["support_text"]) @ head.T, labels).backward()
            inner.step()
        inner.zero_grad()
        F.cross_entropy(20 * forward(row["query_text"]) @ head.T, torch.tensor(row["query_label"])).backward()
        for p, q in zip(meta_params, [p for p in learner.parameters() if p.requires_grad]):
            p.grad = q.grad.clone()
        outer.step()
        outer.zero_grad()
        times.append(time.perf_counter() - start)
    return {"seconds_per_episode": statistics.median(times[1:]), "peak_rss_mb": peak_rss_mb()}


def part_cache(args) -> dict:
    """Seconds per episode: LoRA on all layers, LoRA on the top 2 layers without and with the frozen-layer cache."""
    results = {}
    for name, top, cache in (("all_layers", None, False), ("top2_no_cache", 2, False), ("top2_cache", 2, True)):
        model, tokenizer, lora, episodes = load(num_episodes=args.episodes + 1, top_layers=top)
        trainer = make_trainer(model, tokenizer, lora, episodes, f"outputs/bench_{name}")
        if not cache:
            trainer.encoder.frozen_depth = 0  # the plain path: every inner step recomputes the lower layers
        results[name] = statistics.median(trainer_seconds_per_episode(trainer))
        if name != "top2_no_cache":  # same numbers as with the cache, which changes speed only
            held_out = load_episodes(num_episodes=args.accuracy_episodes, seed=7)
            trainer.args.max_steps = 0
            results[f"{name}_fresh_adapter_accuracy"] = trainer.evaluate(held_out)["eval_accuracy"]
    results["top_layer_cache_speedup"] = results["top2_no_cache"] / results["top2_cache"]
    results["top2_vs_all_layers_speedup"] = results["all_layers"] / results["top2_cache"]
    return results


def part_adapt(args) -> dict:
    """`FewShotClassifier.fit` on BANKING77's 77 x 5 shots with LoRA in every layer and in the top 3 (cache on),
    each with its accuracy on the 3,080 test sentences; SetFit beside them when installed."""
    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    from hf_meta import FewShotClassifier, load_collection
    from hf_meta.adaptation import AdaptationConfig
    from hf_meta.modeling import resolve_model_path, with_lora

    banking = load_collection("banking77", DATA_DIR)
    names = banking["test"].features["label"].names
    texts, labels = list(banking["train_5"]["text"]), [names[i] for i in banking["train_5"]["label"]]
    test_texts, test_labels = list(banking["test"]["text"]), np.array([names[i] for i in banking["test"]["label"]])
    path = resolve_model_path(MODEL_ID)
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = {}
    settings = (("all_layers", None, True), ("top3_layers", 3, True), ("top3_layers_no_cache", 3, False))
    for placement, top_layers, cache in settings:
        base = AutoModel.from_pretrained(path)
        model = with_lora(base, lora_config(base, top_layers))
        clf = FewShotClassifier(model, tokenizer, AdaptationConfig(base_model=MODEL_ID))
        if not cache:
            clf.encoder.frozen_depth = 0  # every inner step recomputes the lower layers
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            clf.fit(texts, labels)
            times.append(time.perf_counter() - start)
        result[placement] = {"seconds": statistics.median(times), "runs": times}
        if cache:  # the cache changes speed only, so one accuracy per placement
            accuracy = float(np.mean(np.asarray(clf.predict(test_texts)) == test_labels))
            result[placement]["test_accuracy"] = accuracy
    result["top3_cache_speedup"] = result["top3_layers_no_cache"]["seconds"] / result["top3_layers"]["seconds"]
    result["adapt_seconds_77x5"] = result["all_layers"]["seconds"]
    result["setfit_seconds_77x5"] = None
    from hf_meta.baselines import SETFIT_MISSING, SetFitBaseline, setfit_available

    if args.no_setfit or not setfit_available():
        result["setfit_note"] = "skipped (--no_setfit)" if args.no_setfit else SETFIT_MISSING
        return result

    start = time.perf_counter()  # one run: SetFit's defaults (20 pairs per example, 1 epoch), model load included
    setfit = SetFitBaseline(MODEL_ID).fit(texts, labels)
    result["setfit_seconds_77x5"] = time.perf_counter() - start
    result["setfit_test_accuracy"] = float(np.mean(np.asarray(setfit.predict(test_texts)) == test_labels))
    return result


def part_scaling(args) -> dict:
    rows = []
    settings = [(5, 1, None), (5, 5, None), (10, 5, None), (20, 5, None), (5, 5, 32), (5, 5, 64), (5, 5, 128)]
    for n_way, k_shot, max_length in settings:
        model, tokenizer, lora, episodes = load(n_way=n_way, k_shot=k_shot, num_episodes=3)
        if max_length is not None:  # repeat each text so that truncation, not the data, sets the length
            episodes = episodes.map(
                lambda row: {key: [(t + " ") * 12 for t in row[key]] for key in ("support_text", "query_text")}
            )
        trainer = make_trainer(model, tokenizer, lora, episodes, "outputs/bench_scaling", max_length=max_length or 64)
        seconds = statistics.median(trainer_seconds_per_episode(trainer))
        length = max_length or "natural (~12)"
        rows.append({"n_way": n_way, "k_shot": k_shot, "tokens": length, "seconds_per_episode": seconds})
    return {"scaling": rows}


def part_processes(args) -> dict:
    """Episodes per second of the intent recipe's meta-training under accelerate launch, 1 vs 2 processes."""
    results = {}
    for processes in (1, 2):
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--num_processes",
            str(processes),
        ]
        launch += ["--multi_gpu", "--main_process_port", "29533"] if processes > 1 else ["--cpu"]
        steps = args.episodes
        cmd = [*launch, __file__, "--part", "launched", "--episodes", str(steps)]
        output = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        report = json.loads(output.strip().splitlines()[-1])
        results[f"episodes_per_second_{processes}p"] = report["episodes_per_second"]
    results["two_process_speedup"] = results["episodes_per_second_2p"] / results["episodes_per_second_1p"]
    return results


def part_launched(args) -> dict:
    """Inside `accelerate launch`: meta-train `episodes` meta-steps of one episode per process; report throughput."""
    model, tokenizer, lora, episodes = load(num_episodes=(args.episodes + 1) * 2)
    trainer = make_trainer(model, tokenizer, lora, episodes, "outputs/bench_launched")
    trainer.args.max_steps = args.episodes + 1
    times = trainer_seconds_per_episode(trainer)
    world = trainer.accelerator.num_processes
    return {"episodes_per_second": world / statistics.median(times), "processes": world}


PARTS = {
    "overhead": part_overhead,
    "hf_meta": part_hf_meta,
    "naive": part_naive,
    "cache": part_cache,
    "adapt": part_adapt,
    "scaling": part_scaling,
    "processes": part_processes,
    "launched": part_launched,
}


PART_ORDER = ("overhead", "hf_meta", "naive", "cache", "adapt", "scaling", "processes")


def run_in_subprocess(part: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--part",
        part,
        "--episodes",
        str(args.episodes),
        "--repeats",
        str(args.repeats),
        "--accuracy_episodes",
        str(args.accuracy_episodes),
        *(["--no_setfit"] if args.no_setfit else []),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"part {part!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer episodes and repeats (a smoke run).")
    parser.add_argument("--part", choices=sorted(PARTS), help="Run one part in this process (used internally).")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--accuracy_episodes", type=int, default=None)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PART_ORDER,
        default=list(PART_ORDER),
        help="Run only these parts and merge them into an existing --output file.",
    )
    parser.add_argument("--no_setfit", action="store_true", help="Skip SetFit's training time (about 20 minutes).")
    parser.add_argument("--output", default=str(HERE / "results" / "speed.json"))
    args = parser.parse_args(argv)
    args.episodes = args.episodes or (4 if args.quick else 10)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.accuracy_episodes = args.accuracy_episodes or (10 if args.quick else 40)
    torch.manual_seed(0)
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return

    output = Path(args.output)
    merge = set(args.parts) != set(PART_ORDER) and output.is_file()
    results = json.loads(output.read_text()) if merge else {}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    results.update(episodes=args.episodes, repeats=args.repeats)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for part in args.parts:
        print(f"running {part} ...", flush=True)
        results[part] = {**run_in_subprocess(part, args), "command": command.strip()}
    results.pop("command", None)  # each part records the command that produced it
    missing = [part for part in PART_ORDER if part not in results]
    if missing:
        raise SystemExit(f"{output} lacks part(s) {missing}; run them with --parts {' '.join(missing)}.")
    results["overhead_ratio"] = results["overhead"]["overhead_ratio"]
    results["naive_speedup"] = results["naive"]["seconds_per_episode"] / results["hf_meta"]["seconds_per_episode"]
    results["naive_peak_rss_ratio"] = results["naive"]["peak_rss_mb"] / results["hf_meta"]["peak_rss_mb"]
    results["top_layer_cache_speedup"] = results["cache"]["top_layer_cache_speedup"]
    results["adapt_seconds_77x5"] = results["adapt"]["adapt_seconds_77x5"]
    results["adapt_seconds_77x5_top3"] = results["adapt"]["top3_layers"]["seconds"]
    results["setfit_seconds_77x5"] = results["adapt"]["setfit_seconds_77x5"]
    results["two_process_speedup"] = results["processes"]["two_process_speedup"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))

    print(f"\n{'metric':<34}{'value':>12}")
    for key in (
        "overhead_ratio",
        "naive_speedup",
        "naive_peak_rss_ratio",
        "top_layer_cache_speedup",
        "adapt_seconds_77x5",
        "adapt_seconds_77x5_top3",
        "setfit_seconds_77x5",
        "two_process_speedup",
    ):
        value = results[key]
        print(f"{key:<34}{'n/a' if value is None else f'{value:.3f}':>12}")
    print("\nscaling (seconds per meta-training episode):")
    for row in results["scaling"]["scaling"]:
        print(
            f"  N={row['n_way']:<3} K={row['k_shot']:<3} tokens={row['tokens']!s:<14} {row['seconds_per_episode']:.3f}"
        )


if __name__ == "__main__":
    main()
