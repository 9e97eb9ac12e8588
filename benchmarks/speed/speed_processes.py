"""Meta-training throughput under `accelerate launch`, for the number of processes it is launched with.

Each process meta-trains one 5-way 5-shot 5-query CLINC150 episode per step (prototype head); the throughput is
processes / median seconds per step over `--episodes` steps (after one warm-up). Run it once per process count;
when the results file holds both 1 and 2 processes, `two_process_speedup` = 2-process / 1-process throughput.
On CPU give each process its share of the cores (`OMP_NUM_THREADS`).

    accelerate launch --config_file recipes/accelerate_configs/single_process.yaml benchmarks/speed/speed_processes.py
    OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true accelerate launch \\
        --config_file recipes/accelerate_configs/multi_process.yaml benchmarks/speed/speed_processes.py
    python benchmarks/speed/speed_processes.py --quick --output outputs/speed.json   # smoke run, one process

Writes `episodes_per_second_<N>p` into the `processes` part of `benchmarks/speed/results/speed.json` (other parts and
the other process count kept), and `two_process_speedup` once both counts are there.
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


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--episodes", type=int, default=10, help="Timed steps per process (after one warm-up).")
    args = parse(parser, argv, quick=dict(episodes=1))
    torch.manual_seed(0)

    model, tokenizer, lora, episodes = speed_setup(args, num_episodes=(args.episodes + 1) * 2)
    trainer = make_trainer(model, tokenizer, lora, episodes, "bench_processes")
    trainer.args.max_steps = args.episodes + 1
    seconds = median(trainer_seconds_per_episode(trainer))
    if not trainer.is_world_process_zero():
        return
    processes = trainer.accelerator.num_processes
    key = f"episodes_per_second_{processes}p"
    content = {key: processes / seconds, f"episodes_{processes}p": args.episodes}
    print_table([{"processes": processes, "seconds_per_step": seconds, key: content[key]}], ["processes", key])
    part = merge_json(args.output, "processes", content, keep_part=True)["processes"]
    if "episodes_per_second_1p" in part and "episodes_per_second_2p" in part:
        speedup = part["episodes_per_second_2p"] / part["episodes_per_second_1p"]
        print(f"two_process_speedup {speedup:.3f}")
        merge_json(args.output, "processes", {"two_process_speedup": speedup}, {"two_process_speedup": speedup}, True)


if __name__ == "__main__":
    main()
