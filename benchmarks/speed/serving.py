"""Serving speed of a fitted classifier: texts/s, peak RSS and accuracy of each predict path on BANKING77.

One 5-shot full-way fit (77 intents, the published `train_5` file) of a fresh adapter on MiniLM, then every path
predicts BANKING77's 3,080 test sentences in its own fresh process (so its peak RSS is its own: loading included):

- `torch (main's predict)`: the code path of `predict_proba` before issue 25 (one padded tokenisation, the
  functional encoder's length-sorted chunks, `torch.no_grad`);
- `torch predict`: `predict_proba` now (length-sorted chunks under `torch.inference_mode`);
- `torch predict, frozen`: after `clf.freeze()` (the LoRA delta merged into a serving copy of the encoder);
- `torch predict, bf16` / `torch predict, frozen, bf16`: the same with `mixed_precision="bf16"` (the encoder under
  bf16 autocast; head and probabilities float32). Fast where the CPU multiplies in bf16 (AVX-512 BF16, AMX), slower
  than float32 where it does not (`--no_bf16` leaves them out);
- `onnxruntime fp32` / `onnxruntime int8`: the `export_onnx` folder run with onnxruntime and `tokenizers` only
  (the worker imports neither torch nor hf_meta), sorted batches of the same size;
- `onnxruntime fp32, unfused` / `onnxruntime int8, unfused`: the same from `export_onnx(..., fuse=False)`, the
  exporter's standard-ops graph (the export before attention, layer norms and GELUs were fused for onnxruntime);
- `setfit` (if installed): SetFit on the same backbone and shots (`--setfit_iterations` pairs per example, saved
  and reloaded so that its process only predicts), its own `predict`.

Each path runs one warm-up pass and `--repeats` timed passes (tokenisation included); texts/s is from the fastest
pass (the 2 cores may be shared with other work: the fastest pass is the least disturbed one), the median is kept
in the JSON too. The machine's speed drifts by 10-20% over minutes, more than the gap between some paths, so the
ONNX graphs are also timed together: one process holds the four graphs and runs one pass of each in turn,
`--rounds` times; each speed ratio is then taken within a round and reported as a mean with a 95% t interval over
the rounds (`paired_onnx_ratios`).

    python benchmarks/speed/serving.py
    python benchmarks/speed/serving.py --quick --output outputs/serving.json   # smoke run: 300 sentences, 1 repeat

Writes `benchmarks/speed/results/serving.json`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

THREADS = 2
TORCH_PATHS = ("torch_main", "torch", "torch_frozen", "torch_bf16", "torch_frozen_bf16")
ONNX_PATHS = ("onnx_fp32", "onnx_int8", "onnx_fp32_unfused", "onnx_int8_unfused")
LABELS = {
    "torch_main": "torch (main's predict)",
    "torch": "torch predict",
    "torch_frozen": "torch predict, frozen",
    "torch_bf16": "torch predict, bf16",
    "torch_frozen_bf16": "torch predict, frozen, bf16",
    "onnx_fp32": "onnxruntime fp32",
    "onnx_int8": "onnxruntime int8",
    "onnx_fp32_unfused": "onnxruntime fp32, unfused",
    "onnx_int8_unfused": "onnxruntime int8, unfused",
    "setfit": "setfit predict",
}


# ---- Workers: each runs in its own process (`--worker NAME`), imports only what its path needs ---------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory. `VmHWM` belongs to the process image, so it starts again at `exec`;
    `ru_maxrss` would carry over the high-water mark of the parent the worker was forked from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def _time_passes(predict, texts: list[str], repeats: int) -> tuple[np.ndarray, list[float]]:
    predict(texts[:256])  # warm-up: first-call allocations and kernel choices
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = predict(texts)
        seconds.append(time.perf_counter() - start)
    return np.asarray(out), seconds


def _torch_worker(path: str, folder: str, texts: list[str], repeats: int):
    import torch

    torch.set_num_threads(THREADS)
    from hf_meta import FewShotClassifier
    from hf_meta.adaptation import predict_logits

    clf = FewShotClassifier.from_pretrained(folder, mixed_precision="bf16" if path.endswith("bf16") else "no")
    if path.startswith("torch_frozen"):
        clf.freeze()
    if path == "torch_main":

        @torch.no_grad()
        def predict(batch_texts):  # `predict_proba` as it was on main before issue 25
            batch = clf._tokenize(list(batch_texts), clf.adaptation_config)
            return predict_logits(clf.encoder, clf.weights, batch, clf.adaptation_config).softmax(-1).numpy()

    else:
        predict = clf.predict_proba
    return _time_passes(predict, texts, repeats)


def _onnx_predictor(folder: str, model_key: str, batch_size: int = 64):
    """`predict(texts) -> probabilities` of one exported graph: onnxruntime and `tokenizers` only."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    meta = json.loads((Path(folder) / "labels.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(folder) / meta[model_key]), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.enable_truncation(meta["max_length"])
    tokenizer.no_padding()
    pad = meta["pad_token_id"]

    def predict(batch_texts):
        ids = [e.ids for e in tokenizer.encode_batch(list(batch_texts))]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), len(meta["labels"])), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[r]) for r in rows)
            input_ids = np.full((len(rows), width), pad, np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                input_ids[j, : len(ids[r])] = ids[r]
                mask[j, : len(ids[r])] = 1
            out[rows] = session.run(["probabilities"], {"input_ids": input_ids, "attention_mask": mask})[0]
        return out

    return predict


def _onnx_worker(path: str, folder: str, texts: list[str], repeats: int):
    predict = _onnx_predictor(folder, "quantized_model" if path.startswith("onnx_int8") else "model")
    return _time_passes(predict, texts, repeats)


def _onnx_rounds_worker(folders: str, texts: list[str], repeats: int) -> dict:
    """Every ONNX path in one process, one pass each in turn, `repeats` rounds: the passes of a round run within
    seconds of each other, so their ratios are paired against the machine's drifting speed."""
    folders = json.loads(folders)
    predictors = {
        path: _onnx_predictor(folders[path], "quantized_model" if path.startswith("onnx_int8") else "model")
        for path in ONNX_PATHS
    }
    for predict in predictors.values():
        predict(texts[:256])  # warm-up
    seconds = {path: [] for path in ONNX_PATHS}
    for _ in range(repeats):
        for path, predict in predictors.items():
            start = time.perf_counter()
            predict(texts)
            seconds[path].append(time.perf_counter() - start)
    return seconds


def _setfit_worker(path: str, folder: str, texts: list[str], repeats: int):
    import torch

    torch.set_num_threads(THREADS)
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(folder)
    return _time_passes(lambda t: model.predict_proba(list(t), batch_size=64, as_numpy=True), texts, repeats)


def worker(path: str, folder: str, texts_file: str, repeats: int, out_file: str) -> None:
    texts = json.loads(Path(texts_file).read_text())
    if path == "onnx_rounds":
        Path(out_file).write_text(json.dumps(_onnx_rounds_worker(folder, texts, repeats)))
        return
    run = _onnx_worker if path.startswith("onnx") else {"setfit": _setfit_worker}.get(path, _torch_worker)
    probabilities, seconds = run(path, folder, texts, repeats)
    np.save(out_file, probabilities.astype(np.float32))
    Path(out_file).with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def run_worker(path: str, folder: Path, texts_file: Path, repeats: int, scratch: Path) -> tuple[np.ndarray, dict]:
    out = scratch / f"{path}.npy"
    command = [sys.executable, __file__, "--worker", path, str(folder), str(texts_file), str(repeats), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, check=True, env=env)
    return np.load(out), json.loads(out.with_suffix(".json").read_text())


def run_rounds(folders: dict[str, str], texts_file: Path, rounds: int, scratch: Path) -> dict[str, list[float]]:
    out = scratch / "rounds.json"
    command = [sys.executable, __file__, "--worker", "onnx_rounds", json.dumps(folders), str(texts_file)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([*command, str(rounds), str(out)], check=True, env=env)
    return json.loads(out.read_text())


# Speed ratios of the ONNX graphs, each from the passes of the same round (numerator over denominator throughput).
RATIOS = {
    "int8_vs_fp32": ("onnx_int8", "onnx_fp32"),
    "int8_vs_unfused_fp32": ("onnx_int8", "onnx_fp32_unfused"),
    "unfused_int8_vs_unfused_fp32": ("onnx_int8_unfused", "onnx_fp32_unfused"),
    "fp32_vs_unfused_fp32": ("onnx_fp32", "onnx_fp32_unfused"),
    "int8_vs_unfused_int8": ("onnx_int8", "onnx_int8_unfused"),
}


def paired_ratios(seconds: dict[str, list[float]]) -> list[dict]:
    """Per ratio: the mean of the per-round ratios with a 95% t interval, their median, min and max."""
    from hf_meta.metrics import mean_ci95

    rows = []
    for name, (faster, slower) in RATIOS.items():
        ratios = np.asarray(seconds[slower]) / np.asarray(seconds[faster])  # throughput ratio = time ratio inverted
        mean, half = mean_ci95(ratios)
        rows.append(
            {
                "ratio": name,
                "mean": mean,
                "ci95": half,
                "median": float(np.median(ratios)),
                "min": float(ratios.min()),
                "max": float(ratios.max()),
                "rounds": len(ratios),
            }
        )
    return rows


# ---- Main: fit once, save and export, then one process per path ----------------------------------------------


def main(argv=None) -> None:
    import torch
    from _common import data_dir, make_parser, parse, print_table

    from hf_meta import FewShotClassifier
    from hf_meta.bench.baselines import setfit_available
    from hf_meta.bench.protocols import intent_tasks
    from hf_meta.bench.scripts import write_results

    parser = make_parser(__doc__, RESULTS / "serving.json")
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes over the test set per path.")
    parser.add_argument("--test_examples", type=int, default=None, help="Predict only the first N test sentences.")
    parser.add_argument("--setfit_iterations", type=int, default=1, help="SetFit pairs per example (0: no SetFit).")
    parser.add_argument(
        "--rounds", type=int, default=8, help="Rounds of the paired ONNX timing (one pass of each graph per round)."
    )
    parser.add_argument("--no_bf16", action="store_true", help="Leave out the bf16 paths (a CPU without bf16 units).")
    args = parse(parser, argv, quick=dict(repeats=1, rounds=2, test_examples=300, setfit_iterations=0))
    torch.set_num_threads(THREADS)
    (task,) = intent_tasks("banking77", [5], data_dir(args))
    texts, gold = list(task.test_texts[: args.test_examples]), list(task.test_labels[: args.test_examples])

    start = time.perf_counter()
    clf = FewShotClassifier.from_pretrained(args.model).fit(task.train_texts, task.train_labels)
    fit_seconds = time.perf_counter() - start
    torch_paths = [path for path in TORCH_PATHS if not (args.no_bf16 and path.endswith("bf16"))]
    paths = [*torch_paths, "onnx_fp32", "onnx_int8", "onnx_fp32_unfused", "onnx_int8_unfused"]
    with tempfile.TemporaryDirectory(prefix="hf_meta_serving_") as scratch:
        scratch = Path(scratch)
        clf.save_pretrained(scratch / "classifier")
        start = time.perf_counter()
        clf.export_onnx(scratch / "onnx", quantize="int8")
        export_seconds = time.perf_counter() - start
        clf.export_onnx(scratch / "onnx_unfused", quantize="int8", fuse=False)
        folders = {path: scratch / "classifier" for path in torch_paths}
        folders.update(onnx_fp32=scratch / "onnx", onnx_int8=scratch / "onnx")
        folders.update(onnx_fp32_unfused=scratch / "onnx_unfused", onnx_int8_unfused=scratch / "onnx_unfused")
        setfit_note = None
        if args.setfit_iterations > 0 and setfit_available():
            from hf_meta.bench.baselines import SetFitBaseline

            setfit = SetFitBaseline(args.model, num_iterations=args.setfit_iterations)
            setfit.fit(task.train_texts, task.train_labels).model.save_pretrained(str(scratch / "setfit"))
            folders["setfit"] = scratch / "setfit"
            paths.append("setfit")
            setfit_classes = list(setfit.model.labels or sorted(set(task.train_labels)))
        elif args.setfit_iterations > 0:
            setfit_note = "setfit is not installed: pip install 'hf_meta[setfit]'"
        texts_file = scratch / "texts.json"
        texts_file.write_text(json.dumps(texts))
        outputs = {path: run_worker(path, folders[path], texts_file, args.repeats, scratch) for path in paths}
        rounds = run_rounds({path: str(folders[path]) for path in ONNX_PATHS}, texts_file, args.rounds, scratch)

    reference = outputs["torch"][0]
    rows = []
    for path in paths:
        probabilities, timing = outputs[path]
        classes = setfit_classes if path == "setfit" else clf.classes_
        predicted = [classes[i] for i in probabilities.argmax(-1)]
        row = {
            "path": LABELS[path],
            "texts_per_second": len(texts) / min(timing["seconds"]),
            "texts_per_second_median": len(texts) / float(np.median(timing["seconds"])),
            "peak_rss_mb": timing["peak_rss_mb"],
            "accuracy": float(np.mean([p == y for p, y in zip(predicted, gold)])),
            "seconds": timing["seconds"],
        }
        if path != "setfit":
            row["argmax_agreement_with_torch"] = float((probabilities.argmax(-1) == reference.argmax(-1)).mean())
            row["max_probability_gap_to_torch"] = float(np.abs(probabilities - reference).max())
        rows.append(row)
    speed = {row["path"]: row["texts_per_second"] for row in rows}
    for row in rows:
        row["speedup_vs_main"] = row["texts_per_second"] / speed[LABELS["torch_main"]]
    accuracy = {row["path"]: row["accuracy"] for row in rows}
    summary = {
        "torch_speedup_vs_main": speed[LABELS["torch"]] / speed[LABELS["torch_main"]],
        "torch_frozen_speedup_vs_main": speed[LABELS["torch_frozen"]] / speed[LABELS["torch_main"]],
        "onnx_fp32_speedup_vs_main": speed[LABELS["onnx_fp32"]] / speed[LABELS["torch_main"]],
        **(
            {}
            if args.no_bf16
            else {
                "torch_bf16_speedup_vs_main": speed[LABELS["torch_bf16"]] / speed[LABELS["torch_main"]],
                "torch_frozen_bf16_speedup_vs_main": speed[LABELS["torch_frozen_bf16"]] / speed[LABELS["torch_main"]],
                "bf16_accuracy_loss_points": 100 * (accuracy[LABELS["torch"]] - accuracy[LABELS["torch_frozen_bf16"]]),
                "bf16_argmax_agreement": rows[paths.index("torch_frozen_bf16")]["argmax_agreement_with_torch"],
            }
        ),
        "int8_speedup_vs_fp32": speed[LABELS["onnx_int8"]] / speed[LABELS["onnx_fp32"]],
        "int8_speedup_vs_unfused_fp32": speed[LABELS["onnx_int8"]] / speed[LABELS["onnx_fp32_unfused"]],
        "unfused_int8_speedup_vs_unfused_fp32": speed[LABELS["onnx_int8_unfused"]]
        / speed[LABELS["onnx_fp32_unfused"]],
        "fused_fp32_speedup_vs_unfused_fp32": speed[LABELS["onnx_fp32"]] / speed[LABELS["onnx_fp32_unfused"]],
        "int8_accuracy_loss_points": 100 * (accuracy[LABELS["onnx_fp32"]] - accuracy[LABELS["onnx_int8"]]),
        "onnx_fp32_max_probability_gap": rows[paths.index("onnx_fp32")]["max_probability_gap_to_torch"],
        "onnx_fp32_same_argmax": rows[paths.index("onnx_fp32")]["argmax_agreement_with_torch"] == 1.0,
        "int8_argmax_agreement": rows[paths.index("onnx_int8")]["argmax_agreement_with_torch"],
    }
    columns = [
        "path",
        "texts_per_second",
        "speedup_vs_main",
        "peak_rss_mb",
        "accuracy",
        "argmax_agreement_with_torch",
        "max_probability_gap_to_torch",
    ]
    print_table(rows, columns, title=f"BANKING77 test ({len(texts)} sentences), 5-shot fit, {THREADS} threads")
    print("\n" + "  ".join(f"{key}={value:.3f}" for key, value in summary.items() if not isinstance(value, bool)))
    ratios = paired_ratios(rounds)
    title = f"ONNX throughput ratios, paired over {args.rounds} rounds in one process"
    print_table(ratios, list(ratios[0]), title=title)
    write_results(
        args.output,
        description=(
            "Predict throughput, peak RSS and accuracy of each serving path on BANKING77's test sentences after one "
            "5-shot full-way fit of a fresh adapter (one process per path; texts/s from the fastest of the timed "
            "passes, tokenisation included)."
        ),
        note=(
            f"Measured on {THREADS} threads of a 2-core machine that may have been shared with other work while it "
            "ran: the absolute texts/s are noisy, the ratios between paths of the same run less so."
        ),
        machine=_machine(),
        model=args.model,
        fit_seconds=fit_seconds,
        export_seconds=export_seconds,
        test_examples=len(texts),
        repeats=args.repeats,
        setfit_iterations=args.setfit_iterations if "setfit" in paths else None,
        setfit_note=setfit_note,
        summary=summary,
        rows=rows,
        paired_onnx_ratios=ratios,
        onnx_round_seconds=rounds,
    )
    print(f"wrote {args.output}")


def _machine() -> str:
    from _common import machine

    return machine()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        main()
