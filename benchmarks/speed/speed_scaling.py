"""How the cost of a meta-training episode grows with the number of classes N, the shots K and the text length.

Median seconds per `MetaTrainer` step (one CLINC150 episode, 5 queries per class, prototype head) for N-way K-shot
episodes at the texts' natural length, and for 5-way 5-shot episodes at fixed token lengths (each text repeated so
that truncation, not the data, sets the length). `--episodes` timed episodes per setting, after one warm-up.

    python benchmarks/speed/speed_scaling.py
    python benchmarks/speed/speed_scaling.py --quick --output outputs/speed.json   # smoke run: 2 small settings

Writes the `scaling` part of `benchmarks/speed/results/speed.json` (other parts kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import torch
from _common import (
    make_parser,
    make_trainer,
    median,
    merge_json,
    parse,
    print_table,
    speed_setup,
    trainer_seconds_per_episode,
)

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

# (n_way, k_shot, max_length); None: the texts' natural length, truncated at 64 tokens
SETTINGS = [(5, 1, None), (5, 5, None), (10, 5, None), (20, 5, None), (5, 5, 32), (5, 5, 64), (5, 5, 128)]
QUICK_SETTINGS = [(2, 1, None), (2, 1, 32)]


def repeat_texts(row: dict) -> dict:
    return {key: [(text + " ") * 12 for text in row[key]] for key in ("support_text", "query_text")}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--episodes", type=int, default=2, help="Timed episodes per setting (after one warm-up).")
    args = parse(parser, argv, quick=dict(episodes=1))
    settings = QUICK_SETTINGS if args.quick else SETTINGS
    torch.manual_seed(0)

    rows = []
    for n_way, k_shot, max_length in settings:
        model, tokenizer, lora, episodes = speed_setup(
            args, n_way=n_way, k_shot=k_shot, num_episodes=args.episodes + 1
        )
        if max_length is not None:
            episodes = episodes.map(repeat_texts)
        trainer = make_trainer(model, tokenizer, lora, episodes, "bench_scaling", max_length=max_length or 64)
        seconds = median(trainer_seconds_per_episode(trainer))
        tokens = max_length or "natural (~12)"
        rows.append({"n_way": n_way, "k_shot": k_shot, "tokens": tokens, "seconds_per_episode": seconds})
    print_table(rows, ["n_way", "k_shot", "tokens", "seconds_per_episode"], "seconds per meta-training episode")
    merge_json(args.output, "scaling", {"scaling": rows, "episodes": args.episodes})


if __name__ == "__main__":
    main()
