"""Peak memory of building episodes: does it follow the rows read and the episodes kept, and nothing else?

`build_episodes` draws `num_episodes` 10-way 5-shot episodes (5 queries per class) from a synthetic collection of
`rows` texts over 200 classes. The number of possible episodes is astronomically larger in every setting, so memory
should grow with `rows` (the texts are read once) and with `num_episodes` (the episodes are kept), not with anything
else. Each setting runs in a fresh process (peak RSS is a high-water mark); the table gives the peak above the
imports, the total peak and the seconds `build_episodes` took.

    python benchmarks/speed/episode_memory.py
    python benchmarks/speed/episode_memory.py --quick --output outputs/episode_memory.json   # smoke run

Writes `benchmarks/speed/results/episode_memory.json`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import in_fresh_process, make_parser, parse, peak_rss_mb, print_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SETTINGS = [(10_000, 100), (100_000, 100), (100_000, 1_000), (100_000, 5_000)]
QUICK_SETTINGS = [(2_000, 10), (2_000, 50)]


def measure(rows: int, num_episodes: int) -> dict:
    import datasets

    from hf_meta import build_episodes

    baseline = peak_rss_mb()
    texts = [f"example sentence number {i} about topic {i % 200} with a few more words" for i in range(rows)]
    source = datasets.Dataset.from_dict({"text": texts, "label": [i % 200 for i in range(rows)]})
    del texts
    start = time.perf_counter()
    episodes = build_episodes(source, n_way=10, k_shot=5, num_query=5, num_episodes=num_episodes, seed=0)
    seconds = time.perf_counter() - start
    if len(episodes) != num_episodes:
        raise RuntimeError(f"built {len(episodes)} episodes, asked for {num_episodes}")
    peak = peak_rss_mb()
    return {
        "rows": rows,
        "num_episodes": num_episodes,
        "peak_rss_mb": round(peak, 1),
        "peak_above_imports_mb": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
    }


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "episode_memory.json", model_and_data=False)
    args = parse(parser, argv, quick={})
    results = [
        in_fresh_process(measure, rows, episodes) for rows, episodes in (QUICK_SETTINGS if args.quick else SETTINGS)
    ]
    print_table(results, ["rows", "num_episodes", "peak_above_imports_mb", "peak_rss_mb", "seconds"])
    write_json(args.output, results=results)


if __name__ == "__main__":
    main()
