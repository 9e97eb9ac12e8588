"""Peak memory of building episodes from a 100,000-row collection: it follows the episodes requested.

Each measurement runs in a fresh subprocess (peak RSS is a high-water mark), building `num_episodes` 10-way 5-shot
episodes (5 queries per class) from a synthetic collection of `rows` texts over 200 classes. The number of possible
episodes is astronomically larger in every setting; memory must grow with `rows` (the texts are read once) and with
`num_episodes` (the episodes are kept), not with anything else.

    python benchmarks/episode_memory.py

Writes `benchmarks/results/episode_memory.json`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = [(10_000, 100), (100_000, 100), (100_000, 1_000), (100_000, 5_000)]


def measure(rows: int, num_episodes: int) -> dict:
    import datasets

    from hf_meta import build_episodes

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    texts = [f"example sentence number {i} about topic {i % 200} with a few more words" for i in range(rows)]
    source = datasets.Dataset.from_dict({"text": texts, "label": [i % 200 for i in range(rows)]})
    del texts
    start = time.perf_counter()
    episodes = build_episodes(source, n_way=10, k_shot=5, num_query=5, num_episodes=num_episodes, seed=0)
    seconds = time.perf_counter() - start
    assert len(episodes) == num_episodes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": rows,
        "num_episodes": num_episodes,
        "peak_rss_mb": round(peak, 1),
        "peak_above_imports_mb": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
        return
    results = []
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    for rows, num_episodes in SETTINGS:
        output = subprocess.run(
            [sys.executable, __file__, str(rows), str(num_episodes)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        row = results[-1]
        print(
            f"rows={row['rows']:>7} episodes={row['num_episodes']:>5} peak RSS above imports "
            f"{row['peak_above_imports_mb']:>7.1f} MB ({row['peak_rss_mb']:.0f} MB total), {row['seconds']:.1f} s"
        )
    out = HERE / "results" / "episode_memory.json"
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/episode_memory.py",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
