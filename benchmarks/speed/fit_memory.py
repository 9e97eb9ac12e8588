"""Peak memory of `FewShotClassifier.fit` as the labelled texts grow: 100, 1,000 and 10,000 BANKING77 texts.

Each setting runs in a fresh process (peak RSS is a high-water mark) on the real MiniLM, with the first `n` texts
of a seeded shuffle of BANKING77's training split (all 77 intents, class names on). The table gives the peak RSS
of the process, the peak above what it held before `fit` (encoder, tokenizer, texts), and the seconds `fit` took.

Settings (`--settings`):

- `defaults`: a fresh adapter at the default adaptation settings (fitted head, 5 inner steps on every text,
  calibration);
- `meta_inner0`: a meta-learned-like adapter (every `lora_B` non-zero, so `adapter_strength="auto"` cross-validates
  the strengths) with the intent recipe's adaptation, the fitted head alone (`inner_steps=0`);
- `meta_defaults`: the same adapter at the default settings: the strength's cross-validation adapts every fold
  with 5 inner steps (15 adaptations), so it is slow; not run by default;
- `self_training`: `defaults` with `unlabeled_texts` (2,000 other training texts) and the default
  `SelfTrainingConfig`; `n // 77` labelled texts per intent (`--sizes 154`: 2 each), and every refit adds the
  pseudo-labels (`last_fit_texts`).

A run stops when its RSS passes `--cap_gb` (a watchdog thread in the child), and the row says so. To measure the
code before a change, put another checkout first on the path:

    python benchmarks/speed/fit_memory.py            # 100, 1,000, 10,000 texts, `defaults` (10,000: 10+ min, 2 cores)
    python benchmarks/speed/fit_memory.py --sizes 100 1000 --settings defaults meta_inner0 self_training
    mkdir -p outputs/before && git archive ada745e | tar -x -C outputs/before && PYTHONPATH=outputs/before \\
        python benchmarks/speed/fit_memory.py --label before --sizes 100 1000     # main's code, merged as its own rows
    python benchmarks/speed/fit_memory.py --quick --output outputs/fit_memory.json   # smoke run: 100 texts

Writes `benchmarks/speed/results/fit_memory.json`: rows are merged by (label, setting, texts), so `before` and
`after` runs share the file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, in_fresh_process, make_parser, parse, peak_rss_mb, print_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SETTINGS = ("defaults", "meta_inner0", "meta_defaults", "self_training")
POOL_SIZE = 2_000


def _measured_code() -> str:
    """The folder of the hf_meta package being measured, relative to the working directory when it lies below it
    (results files name no machine's absolute paths)."""
    import hf_meta

    folder = Path(hf_meta.__file__).resolve().parent
    try:
        return str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        return folder.name


def _watchdog(cap_mb: float, report: Path) -> None:
    """Stop this process once its resident memory passes `cap_mb`, writing when to `report` first."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()

    def watch() -> None:
        while True:
            with open("/proc/self/statm") as statm:
                rss_mb = int(statm.read().split()[1]) * page / 2**20
            if rss_mb > cap_mb:
                report.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def measure(setting: str, texts_count: int, model: str, data: str, cap_gb: float, report: str) -> dict:
    import numpy as np
    import torch

    from hf_meta import AdaptationConfig, FewShotClassifier
    from hf_meta.bench.scripts import load_encoder
    from hf_meta.data import load_collection
    from hf_meta.modeling import with_lora

    torch.manual_seed(0)
    train = load_collection("banking77", data)["train"]
    names = train.features["label"].names
    order = np.random.default_rng(0).permutation(len(train))
    texts = [train[int(i)]["text"] for i in order]
    labels = [names[train[int(i)]["label"]] for i in order]
    if setting == "self_training":  # `texts_count` labelled texts, 2 per class at 154; the pool is other texts
        per_class: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            per_class.setdefault(label, []).append(i)
        shots = max(1, texts_count // len(per_class))
        chosen = sorted(i for rows in per_class.values() for i in rows[:shots])[:texts_count]
        taken = set(chosen)
        pool = [t for i, t in enumerate(texts) if i not in taken][:POOL_SIZE]
        texts, labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
    else:
        texts, labels = texts[:texts_count], labels[:texts_count]
    base, tokenizer = load_encoder(model)
    lora_model = with_lora(base, None)
    if setting.startswith("meta"):  # stands in for a meta-trained adapter: a LoRA delta for the strengths to scale
        with torch.no_grad():
            for name, parameter in lora_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.01)
    config = AdaptationConfig(base_model=model, inner_steps=0 if setting == "meta_inner0" else 5)
    clf = FewShotClassifier(lora_model, tokenizer, config)
    kwargs = {"unlabeled_texts": pool} if setting == "self_training" else {}
    before = peak_rss_mb()
    _watchdog(cap_gb * 1024, Path(report))
    start = time.perf_counter()
    clf.fit(texts, labels, **kwargs)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    fitted = len(texts) + len(clf.pseudo_labeled_)
    return {
        "hf_meta": _measured_code(),  # which checkout's code was measured
        "setting": setting,
        "texts": texts_count,
        "last_fit_texts": fitted,
        "peak_rss_mb": round(peak, 1),
        "peak_above_start_mb": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "adapter_strength": clf.adapter_strength_,
    }


def run(setting: str, texts_count: int, args) -> dict:
    report = Path(args.output).with_suffix(f".{os.getpid()}.cap")
    report.unlink(missing_ok=True)
    try:
        return in_fresh_process(measure, setting, texts_count, args.model, str(data_dir(args)), args.cap_gb, report)
    except Exception as err:  # the watchdog ended the child (BrokenProcessPool) or the fit failed
        stopped = json.loads(report.read_text()) if report.is_file() else None
        report.unlink(missing_ok=True)
        if stopped is None:
            what = f"{type(err).__name__}: {err}"
        else:
            what = f"stopped above {args.cap_gb:g} GB RSS after {stopped['seconds']:g} s of fit"
        return {"setting": setting, "texts": texts_count, "peak_rss_mb": None, "failed": what}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "fit_memory.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000], help="Labelled texts.")
    parser.add_argument("--settings", nargs="+", default=["defaults"], choices=SETTINGS)
    parser.add_argument("--label", default="after", help="Row label, e.g. `before` for another checkout's code.")
    parser.add_argument("--cap_gb", type=float, default=12.0, help="Stop a run whose RSS passes this (GB).")
    args = parse(parser, argv, quick={"sizes": [100]})

    rows = []
    for setting in args.settings:
        for texts_count in args.sizes:
            row = {"label": args.label, **run(setting, texts_count, args), "command": " ".join(["python", *sys.argv])}
            row.setdefault("hf_meta", _measured_code())  # a stopped run reports no path
            rows.append(row)
            print(json.dumps(row), flush=True)
    columns = ["label", "setting", "texts", "last_fit_texts", "peak_rss_mb", "peak_above_start_mb", "seconds"]
    print_table(rows, [*columns, "failed"], f"peak RSS of fit (hf_meta from {_measured_code()})")
    output = Path(args.output)
    previous = json.loads(output.read_text()).get("rows", []) if output.is_file() else []
    keys = {(row["label"], row["setting"], row["texts"]) for row in rows}
    kept = [row for row in previous if (row["label"], row["setting"], row["texts"]) not in keys]
    write_json(args.output, rows=kept + rows)


if __name__ == "__main__":
    main()
