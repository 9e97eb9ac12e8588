"""`MetaTrainer` against the first-order MAML that many tutorials write, in time and peak memory.

The naive reference deep-copies the model per task, re-tokenises the texts at every step and calls
`loss.backward()` and `optimizer.step()` on the copy; it runs the same algorithm as `MetaTrainer` with the prototype
head (`head_fit_steps=0`): 5 inner SGD steps on the support set, then the query loss. 5-way 5-shot 5-query
CLINC150 episodes, median seconds per episode over `--episodes` (after one warm-up). Each implementation runs in a
fresh process, so its peak RSS counts only its own allocations.

- `naive_speedup`: naive seconds per episode / `MetaTrainer` seconds per episode;
- `naive_peak_rss_ratio`: naive peak RSS / `MetaTrainer` peak RSS.

    python benchmarks/speed/speed_naive.py
    python benchmarks/speed/speed_naive.py --quick --output outputs/speed.json   # smoke run

Writes the `hf_meta` and `naive` parts and the two ratios of `benchmarks/speed/results/speed.json` (other parts kept).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import torch
import torch.nn.functional as F
from _common import (
    in_fresh_process,
    make_parser,
    make_trainer,
    median,
    merge_json,
    parse,
    peak_rss_mb,
    print_table,
    speed_setup,
    trainer_seconds_per_episode,
)

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


def run_hf_meta(args) -> dict:
    torch.manual_seed(0)
    model, tokenizer, lora, episodes = speed_setup(args, num_episodes=args.episodes + 1)
    times = trainer_seconds_per_episode(make_trainer(model, tokenizer, lora, episodes, "bench_hf_meta"))
    return {"seconds_per_episode": median(times), "episodes": len(times), "peak_rss_mb": peak_rss_mb()}


def run_naive(args) -> dict:
    """Deepcopy per task, tokenise per step, `.backward()` and `optimizer.step()`: first-order MAML by hand."""
    from peft import get_peft_model

    torch.manual_seed(0)
    model, tokenizer, lora, episodes = speed_setup(args, num_episodes=args.episodes + 1)
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
    return {"seconds_per_episode": median(times[1:]), "episodes": len(times) - 1, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--episodes", type=int, default=10, help="Timed episodes (after one warm-up).")
    args = parse(parser, argv, quick=dict(episodes=1))

    hf_meta = in_fresh_process(run_hf_meta, args)
    naive = in_fresh_process(run_naive, args)
    summary = {
        "naive_speedup": naive["seconds_per_episode"] / hf_meta["seconds_per_episode"],
        "naive_peak_rss_ratio": naive["peak_rss_mb"] / hf_meta["peak_rss_mb"],
    }
    rows = [{"implementation": "MetaTrainer", **hf_meta}, {"implementation": "naive FOMAML", **naive}]
    print_table(rows, ["implementation", "seconds_per_episode", "peak_rss_mb", "episodes"])
    print_table([{"ratio": key, "value": value} for key, value in summary.items()], ["ratio", "value"])
    merge_json(args.output, "hf_meta", hf_meta)
    merge_json(args.output, "naive", naive, summary)


if __name__ == "__main__":
    main()
