"""The frozen-layer cache at corpus scale: build and read it for 100,000+ sentences of every collection together.

`FrozenStates.build` writes the frozen lower layers' output (MiniLM with LoRA in the top 3 of its 6 layers, as the
intent recipe meta-trains) one batch of sentences at a time into an Arrow file and memory-maps it back, so the corpus'
states never sit in memory at once. This script checks that at scale and states the budget:

- the corpus: the texts of every split of every collection in the data folder, deduplicated, a seeded sample of
  `--sentences` of them (default 120,000), tokenised to `--max_length` (the recipes' 64);
- build, in a fresh process: wall seconds, sentences per second, the file's bytes (per sentence and per token) and
  the process's peak RSS and peak anonymous memory (RSS less the memory-mapped file's pages, which the kernel
  drops when memory is short), each against its value before the build (model and texts loaded);
- read, in another fresh process: opening the file (the reuse path of `build`), then the rows of `--episodes`
  episodes of `--episode_sentences` random sentences each (`FrozenStates.batch`, what `EpisodeCollator` calls), their
  seconds per episode and the peak RSS.

    HF_HUB_OFFLINE=1 python benchmarks/speed/frozen_state_scale.py              # about 10 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/speed/frozen_state_scale.py --quick --output outputs/frozen_state_scale.json

The cache goes to `--cache_dir` (default `outputs/frozen_state_scale/`) and is deleted at the end unless `--keep`.
Writes `benchmarks/speed/results/frozen_state_scale.json`.
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, in_fresh_process, make_parser, parse, peak_rss_mb, write_json

RESULTS = Path(__file__).resolve().parent / "results"
TOP_LAYERS = 3  # the intent recipe's LoRA placement on MiniLM's 6 layers


def _status_mb(field: str) -> float:
    """A memory field of this process from /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


@contextmanager
def peak_anonymous_mb(every: float = 0.05):
    """Samples the process's anonymous memory (heap, tensors, Python objects) while the block runs; yields a dict
    whose "peak" holds the highest sample. Unlike the peak RSS, it leaves out the memory-mapped file's pages, which
    the kernel reclaims whenever memory is short."""
    peak = {"peak": _status_mb("RssAnon")}
    done = threading.Event()

    def sample():
        while not done.wait(every):
            peak["peak"] = max(peak["peak"], _status_mb("RssAnon"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak["peak"] = max(peak["peak"], _status_mb("RssAnon"))


def corpus(data_dir: str | None, sentences: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """A seeded sample of `sentences` distinct texts of every collection (all splits), and each one's count."""
    from hf_meta.data import list_collections, load_collection

    texts, counts = {}, {}
    for name in list_collections():
        collection = load_collection(name, data_dir)
        before = len(texts)
        for split in collection.values():
            texts.update(dict.fromkeys(split["text"]))
        counts[name] = len(texts) - before
    pool = sorted(texts)
    if sentences > len(pool):
        raise SystemExit(f"--sentences {sentences} is more than the {len(pool)} distinct texts of the data folder.")
    return random.Random(seed).sample(pool, sentences), counts


def _encoder(model_name: str):
    from hf_meta.bench.scripts import load_encoder, lora_config
    from hf_meta.modeling import FunctionalEncoder, with_lora

    model, tokenizer = load_encoder(model_name)
    model = with_lora(model, lora_config(model, TOP_LAYERS)).eval()
    return FunctionalEncoder(model), tokenizer


def build(model_name: str, texts: list[str], max_length: int, cache_dir: str) -> dict:
    """Runs in a fresh process: the build's time, file size and memory."""
    from hf_meta.frozen_states import FrozenStates

    encoder, tokenizer = _encoder(model_name)
    rss_before, anonymous_before = peak_rss_mb(), _status_mb("RssAnon")
    start = time.perf_counter()
    with peak_anonymous_mb() as anonymous:
        states = FrozenStates.build(encoder, tokenizer, texts, max_length=max_length, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    [path] = Path(cache_dir).glob("frozen_states-*.arrow")
    tokens = sum(len(ids) for ids in states.dataset["input_ids"])
    return {
        "sentences": len(states),
        "tokens": tokens,
        "frozen_layers": encoder.frozen_depth,
        "hidden_size": encoder.model.get_base_model().config.hidden_size,
        "seconds": round(seconds, 1),
        "sentences_per_second": round(len(states) / seconds, 1),
        "file_bytes": path.stat().st_size,
        "bytes_per_sentence": round(path.stat().st_size / len(states)),
        "bytes_per_token": round(path.stat().st_size / tokens, 1),
        "rss_before_build_mb": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
        "anonymous_before_build_mb": round(anonymous_before),
        "peak_anonymous_mb": round(anonymous["peak"]),
    }


def read(model_name: str, texts: list[str], max_length: int, cache_dir: str, episodes: int, size: int) -> dict:
    """Runs in a fresh process: opening the cache and gathering episodes' rows from it."""
    from hf_meta.frozen_states import FrozenStates

    encoder, tokenizer = _encoder(model_name)
    rss_before, anonymous_before = peak_rss_mb(), _status_mb("RssAnon")
    start = time.perf_counter()
    with peak_anonymous_mb() as anonymous_open:
        states = FrozenStates.build(encoder, tokenizer, texts, max_length=max_length, cache_dir=cache_dir)  # reused
    open_seconds = time.perf_counter() - start
    rss_open = peak_rss_mb()
    rng = random.Random(0)
    seconds = []
    with peak_anonymous_mb() as anonymous:
        for _ in range(episodes):
            chosen = rng.sample(texts, size)
            start = time.perf_counter()
            batch = states.batch(chosen, pad_token_id=tokenizer.pad_token_id)
            seconds.append(time.perf_counter() - start)
            assert len(batch["input_ids"]) == size
    seconds.sort()
    return {
        "open_seconds": round(open_seconds, 1),
        "rss_before_open_mb": round(rss_before),
        "rss_after_open_mb": round(rss_open),
        "episodes": episodes,
        "sentences_per_episode": size,
        "median_ms_per_episode": round(1000 * seconds[len(seconds) // 2], 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "anonymous_before_open_mb": round(anonymous_before),
        "peak_anonymous_open_mb": round(anonymous_open["peak"]),
        "peak_anonymous_mb": round(max(anonymous_open["peak"], anonymous["peak"])),
    }


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "frozen_state_scale.json")
    parser.add_argument("--sentences", type=int, default=120_000)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--episode_sentences", type=int, default=200, help="Support + query texts of an episode.")
    parser.add_argument("--cache_dir", default="outputs/frozen_state_scale")
    parser.add_argument("--keep", action="store_true", help="Keep the cache file.")
    args = parse(parser, argv, quick={"sentences": 2000, "episodes": 20})
    texts, counts = corpus(str(data_dir(args)), args.sentences, seed=0)
    shutil.rmtree(args.cache_dir, ignore_errors=True)
    print(f"{len(texts)} sentences sampled from {sum(counts.values())} distinct texts of {len(counts)} collections")
    built = in_fresh_process(build, args.model, texts, args.max_length, args.cache_dir)
    print(
        f"build: {built['seconds']} s ({built['sentences_per_second']} sentences/s), {built['file_bytes'] / 1e9:.2f} "
        f"GB ({built['bytes_per_sentence']} bytes/sentence, {built['bytes_per_token']} bytes/token), peak RSS "
        f"{built['peak_rss_mb']} MB ({built['rss_before_build_mb']} MB before the build), peak anonymous "
        f"{built['peak_anonymous_mb']} MB ({built['anonymous_before_build_mb']} MB before)"
    )
    size = min(args.episode_sentences, len(texts))
    reads = in_fresh_process(read, args.model, texts, args.max_length, args.cache_dir, args.episodes, size)
    print(
        f"read: opened in {reads['open_seconds']} s, {reads['median_ms_per_episode']} ms per episode of "
        f"{size} sentences, peak RSS {reads['peak_rss_mb']} MB ({reads['rss_before_open_mb']} MB before opening), "
        f"peak anonymous {reads['peak_anonymous_mb']} MB ({reads['anonymous_before_open_mb']} MB before)"
    )
    if not args.keep:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
    write_json(
        args.output,
        description=__doc__.split("\n\n")[0],
        model=args.model,
        lora_top_layers=TOP_LAYERS,
        max_length=args.max_length,
        collections=counts,
        build=built,
        read=reads,
    )


if __name__ == "__main__":
    main()
