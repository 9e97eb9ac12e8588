"""How the encoder cuts a batch into length chunks: fixed-size chunks of sorted rows against `length_partition`.

The encoder passes of the intent recipe's meta-steps (MiniLM, LoRA in the top 3 layers, frozen layers precomputed
per sentence, 4 episodes of 10-20-way 1-5-shot 3-query CLINC150 + HWU64 tasks per meta-step): per meta-step one
gradient-free support pass (support texts and class names of the 4 episodes) and one query pass with its backward,
as `hf_meta.meta_batch` runs them. Both ways of chunking run on the same meta-steps in the same process, in
alternating order (ABBA), so that drift of a shared machine falls on both; the time per meta-step is paired.

    HF_HUB_OFFLINE=1 python benchmarks/speed/length_chunks.py            # about 3 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/speed/length_chunks.py --chunk_costs 64 192 512   # the stored results
    HF_HUB_OFFLINE=1 python benchmarks/speed/length_chunks.py --meta_steps 4 --output outputs/length_chunks.json

Writes `benchmarks/speed/results/length_chunks.json`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import machine

from hf_meta import modeling
from hf_meta.bench.protocols import deduplicated, hold_out_domains, intent_pools, mixed_episodes
from hf_meta.bench.scripts import DEFAULT_MODEL, load_encoder, lora_config, write_results
from hf_meta.data import resolve_data_dir
from hf_meta.episode_collator import episode_name_phrases
from hf_meta.metrics import mean_ci95
from hf_meta.modeling import ROW_STATES, FunctionalEncoder, length_partition, meta_parameters, with_lora

RESULTS = Path(__file__).resolve().parent / "results"


def fixed_chunks(lengths: torch.Tensor, max_rows: int, chunk_cost: int = 0) -> list[torch.Tensor]:
    """The previous rule: rows sorted by length, cut every `max_rows` rows."""
    order = torch.argsort(lengths, stable=True)
    return list(order.split(max_rows))


def padded_tokens(lengths: torch.Tensor, groups: list[torch.Tensor]) -> int:
    return int(sum(len(rows) * int(lengths[rows].max()) for rows in groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--meta_steps", type=int, default=40)
    parser.add_argument(
        "--chunk_costs", type=int, nargs="+", default=[modeling.CHUNK_COST_TOKENS], help="Prices per call to compare."
    )
    parser.add_argument("--output", default=str(RESULTS / "length_chunks.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    data_dir = resolve_data_dir(args.data_dir)
    sources = ["clinc150", "hwu64"]
    pools = [deduplicated(pool) for pool in intent_pools(sources, data_dir)]
    pools, _ = hold_out_domains(pools, sources, 0.2, data_dir, seed=0)
    episodes = mixed_episodes(pools, args.meta_steps * 4, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=0)

    base, tokenizer = load_encoder(args.model)
    model = with_lora(base, lora_config(base, 3)).eval()
    encoder = FunctionalEncoder(model, "mean", True)
    lora = {name: p.detach().clone().requires_grad_() for name, p in meta_parameters(model).items()}

    def batch_of(texts: list[str]) -> dict:
        batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
        batch[ROW_STATES] = encoder.frozen_row_states(batch)  # precomputed once per sentence, as FrozenStates does
        return batch

    steps = []
    for step in range(args.meta_steps):
        rows = episodes.select(range(4 * step, 4 * step + 4))
        support = [t for row in rows for t in row["support_text"]]
        support += [p for row in rows for p in episode_name_phrases(row["class_names"])]
        steps.append((batch_of(support), batch_of([t for row in rows for t in row["query_text"]])))

    def meta_step(support: dict, query: dict) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            encoder(lora, encoder.cache_frozen_layers(support))
        embeddings = encoder(lora, encoder.cache_frozen_layers(query))
        torch.autograd.grad(embeddings.pow(2).sum(), list(lora.values()))
        return time.perf_counter() - start

    rules = {"fixed": fixed_chunks}
    for cost in args.chunk_costs:
        rules[f"length_partition, {cost}"] = functools.partial(length_partition, chunk_cost=cost)
    seconds = {name: [] for name in rules}
    tokens = {name: 0 for name in rules}
    calls = {name: 0 for name in rules}
    meta_step(*steps[0])  # warm-up
    for i, (support, query) in enumerate(steps):
        for name in list(rules) if i % 2 == 0 else list(rules)[::-1]:  # ABBA
            modeling.length_partition = rules[name]  # what FunctionalEncoder._chunks calls
            seconds[name].append(meta_step(support, query))
            for batch in (support, query):
                lengths = batch["attention_mask"].sum(1)
                groups = rules[name](lengths, encoder.chunk_size)
                tokens[name] += padded_tokens(lengths, groups)
                calls[name] += len(groups)
    modeling.length_partition = length_partition
    real = sum(int(b["attention_mask"].sum()) for step in steps for b in step)
    paired = {}
    for name in list(rules)[1:]:
        mean, ci = mean_ci95(np.array(seconds["fixed"]) - np.array(seconds[name]))
        paired[name] = {"mean": mean, "ci95": ci}
    rows = [
        {
            "rule": name,
            "seconds_per_meta_step": round(float(np.mean(seconds[name])), 4),
            "episodes_per_second": round(4 / float(np.mean(seconds[name])), 3),
            "padding_share": round(1 - real / tokens[name], 4),
            "encoder_calls": calls[name],
        }
        for name in rules
    ]
    print(f"{'rule':<24} {'s / meta-step':>14} {'episodes/s':>11} {'padding':>8} {'calls':>6}")
    for row in rows:
        print(
            f"{row['rule']:<24} {row['seconds_per_meta_step']:>14.4f} {row['episodes_per_second']:>11.3f} "
            f"{100 * row['padding_share']:>7.1f}% {row['encoder_calls']:>6}"
        )
    for name, diff in paired.items():
        print(f"fixed - {name}: {diff['mean']:+.4f} +- {diff['ci95']:.4f} s per meta-step (paired over {len(steps)})")
    write_results(
        args.output,
        machine=machine(),
        description=(
            "Encoder passes of the intent recipe's meta-steps (support pass without graph, query pass and backward), "
            "frozen layers precomputed, LoRA in the top 3 layers, chunks of at most 64 rows; both rules on the same "
            "meta-steps in alternating order."
        ),
        meta_steps=args.meta_steps,
        rows=rows,
        paired_seconds_fixed_minus_rule=paired,
    )


if __name__ == "__main__":
    main()
