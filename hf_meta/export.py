"""ONNX export of a fitted [`FewShotClassifier`]: one graph from token ids to class probabilities, int8 optional.

Needs the optional extra `pip install 'hf_meta[onnx]'` (onnx, onnxruntime, and onnxscript for `torch.onnx`'s
exporter); hf_meta imports it only when an export runs. The folder written holds:

- `model.onnx`: [`hf_meta.serving.ServingModel`] exported with `torch.onnx.export`: the encoder with the adapted
  LoRA merged into its weights, the pooling, the L2 normalisation and the cosine head with its scale and bias, then a
  softmax. Inputs `input_ids` and `attention_mask` (int64, batch x sequence, both dynamic), output `probabilities`
  (float32, batch x classes, columns in the order of `labels`). By default its attention, layer norms and GELUs are
  fused into onnxruntime's own operators (hf_meta/onnx_fusion.py), so it runs in onnxruntime only; `fuse=False`
  keeps standard ONNX operators for other runtimes.
- `model_quantized.onnx` with `quantize="int8"`: the same graph with its weight matrices quantized to int8 by
  onnxruntime's dynamic quantiser (activations are quantized on the fly; faster on CPU, a little less accurate).
- the tokenizer files (`tokenizer.json`, ...) and `labels.json`: the labels, the `max_length` texts are cut at,
  the pad token id, the file names, the opset and the fusions applied (`fused`).

The probabilities carry the temperature of `fit(..., calibrate=True)` (it is folded into the head). A classifier
fitted with an out-of-scope label (hf_meta/out_of_scope.py) exports its rule too: two more outputs,
`in_scope_scores` (float32, batch) and `out_of_scope` (bool, batch: the score is below the saved threshold), and
`labels.json` holds `out_of_scope` (`label`, `threshold`, `rule`), so a caller can answer the label where
`out_of_scope` is true, or compare `in_scope_scores` with a threshold of its own.

Loading it needs onnxruntime and a tokenizer only (no torch, no hf_meta):

```python
import json

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = "banking-onnx"
meta = json.load(open(f"{folder}/labels.json"))
session = ort.InferenceSession(f"{folder}/{meta['model']}", providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
tokenizer.enable_truncation(meta["max_length"])
tokenizer.enable_padding(pad_id=meta["pad_token_id"])
encoded = tokenizer.encode_batch(["my card still hasn't arrived"])
feed = {
    "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
}
probabilities = session.run(["probabilities"], feed)[0]
print([meta["labels"][i] for i in probabilities.argmax(-1)])
```

(`transformers.AutoTokenizer.from_pretrained(folder)` works too, with `truncation=True, max_length=...,
padding=True, return_tensors="np"`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.utils import logging

from .io_utils import MANIFEST_NAME, STAGING_PREFIX, atomic_directory, file_digest
from .onnx_fusion import fuse_for_onnxruntime
from .out_of_scope import ScopedServingModel
from .serving import ServingModel, check_fitted
from .validation import is_int

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

logger = logging.get_logger(__name__)

MODEL_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
EXPORT_LABELS_FILE = "labels.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "probabilities"
SCOPE_OUTPUT_NAMES = ("in_scope_scores", "out_of_scope")  # with an out-of-scope rule (hf_meta/out_of_scope.py)
QUANTIZE_CHOICES = (None, "int8")
# `torch.onnx.export(dynamo=True)` writes opset 18 natively; it converts to later opsets, not reliably to earlier ones.
MIN_OPSET = 18
DEFAULT_OPSET = 18
ONNX_MISSING = (
    "ONNX export needs the optional extra: pip install 'hf_meta[onnx]' (onnx, onnxruntime and onnxscript); "
    "missing: {missing}."
)
# The export files an overwrite owns in an existing folder (removed when this export does not write them).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
)
EXPORT_FILES = (MODEL_FILE, f"{MODEL_FILE}.data", QUANTIZED_FILE, f"{QUANTIZED_FILE}.data", EXPORT_LABELS_FILE)
# Above this many bytes of weights, the graph keeps them in a `.data` file beside it (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_500_000_000
# The fp32 graph must reproduce the torch probabilities on the probe texts to this tolerance, or the export fails.
VERIFY_ATOL = 1e-4


def require_onnx() -> tuple[Any, Any]:
    """`(onnx, onnxruntime)`, or an `ImportError` naming the `hf_meta[onnx]` extra."""
    missing = []
    modules = {}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(ONNX_MISSING.format(missing=", ".join(missing)))
    return modules["onnx"], modules["onnxruntime"]


def max_opset() -> int:
    """The highest opset both the installed `torch.onnx` exporter and `onnx` support."""
    import onnx

    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as torch_max
    except ImportError:  # a private constant: fall back to what onnx knows
        torch_max = onnx.defs.onnx_opset_version()
    return min(int(torch_max), int(onnx.defs.onnx_opset_version()))


def export_onnx(
    classifier: FewShotClassifier,
    path: str | os.PathLike,
    *,
    quantize: str | None = None,
    opset: int | None = None,
    fuse: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a fitted classifier to `path` as an ONNX folder that onnxruntime runs alone (see the module docstring).

    Args:
        classifier: a fitted [`FewShotClassifier`].
        path: the folder to write; it must not exist, or be empty, unless `overwrite=True`.
        quantize: `None` (fp32 only) or `"int8"` (also `model_quantized.onnx`, dynamic int8 weights).
        opset: the ONNX opset (default 18, the exporter's own; up to the highest the installed torch and onnx know).
        fuse: fuse attention, layer norms and GELUs into onnxruntime's operators (faster, and int8 then quantizes
            the attention projections too); the fused graph runs in onnxruntime only. Where the rewriter cannot
            fuse an architecture, or its graph misses the tolerance, the standard-ops graph is kept (with a
            warning), and `labels.json` says which (`fused`).
        overwrite: replace the export files of a non-empty folder (other files in it are kept).

    Returns:
        The folder.

    The export is atomic: the files are written into a hidden staging folder and moved into place only once all
    are written and the fp32 graph was checked against the torch probabilities, so an interrupted export leaves
    no half-written folder (and an overwrite leaves the previous export intact).

    Example:
        ```python
        >>> from hf_meta.export import export_onnx
        >>> export_onnx(clf.fit(texts, labels), "banking-onnx", quantize="int8")
        PosixPath('banking-onnx')
        ```
    """
    check_fitted(classifier, "export it")
    if not isinstance(fuse, bool):
        raise TypeError(f"`fuse` must be True or False, got {fuse!r}.")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"`quantize` must be one of {list(QUANTIZE_CHOICES)}, got {quantize!r}.")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"`path` {str(target)!r} is a file; give a folder path for the export.")
    if _has_entries(target) and not overwrite:
        raise FileExistsError(
            f"`path` {str(target)!r} exists and is not empty; pass `overwrite=True` to replace the export files in "
            "it, or choose another folder."
        )
    onnx, ort = require_onnx()
    highest = max_opset()
    opset = DEFAULT_OPSET if opset is None else opset
    if not is_int(opset) or not MIN_OPSET <= opset <= highest:
        raise ValueError(
            f"`opset` must be an int from {MIN_OPSET} to {highest} (what the installed torch {torch.__version__} "
            f"exporter and onnx {onnx.__version__} write), got {opset!r}; pass one in that range or leave the default."
        )

    model = ServingModel.from_classifier(classifier, mixed_precision="no").to("cpu")  # the graph is float32
    outputs = [OUTPUT_NAME]
    detector = classifier.out_of_scope_
    if detector is not None:  # the rule and its threshold go into the graph
        model = ScopedServingModel(model, detector).eval()
        outputs = [OUTPUT_NAME, *SCOPE_OUTPUT_NAMES]
    limit = min(classifier.adaptation_config.max_length, classifier.position_limit)
    probe = _probe_batch(classifier, limit)
    with torch.inference_mode():
        expected = model(probe["input_ids"], probe["attention_mask"])
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    external = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > _EXTERNAL_DATA_BYTES
    with _staged_folder(target) as staging:
        unfused = staging / "unfused" / MODEL_FILE  # the exporter's graph, verified before any fusion
        unfused.parent.mkdir()
        _export_graph(model, probe, unfused, opset, external, outputs)
        written = onnx.load(str(unfused), load_external_data=False)
        got = {entry.version for entry in written.opset_import if entry.domain in ("", "ai.onnx")}
        if got != {opset}:
            raise ValueError(
                f"`opset` {opset} was asked for but the exporter wrote opset {sorted(got)}; use opset {DEFAULT_OPSET}."
            )
        _verify(ort, unfused, probe, expected, outputs)
        fused = _place_graph(ort, unfused, staging / MODEL_FILE, fuse, (probe, expected, outputs), external)
        shutil.rmtree(unfused.parent)
        if quantize == "int8":
            _quantize_int8(staging / MODEL_FILE, staging / QUANTIZED_FILE, external)
        classifier.tokenizer.save_pretrained(staging)
        meta = {
            "labels": list(classifier.classes_),
            "max_length": limit,
            "pad_token_id": int(classifier.tokenizer.pad_token_id or 0),
            "model": MODEL_FILE,
            "quantized_model": QUANTIZED_FILE if quantize == "int8" else None,
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
            "opset": opset,
            "fused": fused,
            "base_model": classifier.base_model_id(),
        }
        if getattr(classifier, "multi_label_", None) is not None:  # sigmoid outputs: a class reaching its threshold
            meta["multi_label"] = {"thresholds": [float(t) for t in classifier.multi_label_.thresholds]}
        if detector is not None:
            meta["outputs"] = outputs
            meta["out_of_scope"] = {"label": detector.label, "threshold": detector.threshold, "rule": detector.rule}
        # A plain write: the staging folder as a whole is what appears atomically.
        (staging / EXPORT_LABELS_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info(f"Exported the classifier to {target} ({MODEL_FILE}{' + ' + QUANTIZED_FILE if quantize else ''}).")
    return target


def _has_entries(folder: Path) -> bool:
    """Whether `folder` holds anything but the staging leftovers of an interrupted save or export."""
    if not folder.is_dir():
        return False
    return any(not entry.name.startswith(STAGING_PREFIX) for entry in folder.iterdir())


@contextlib.contextmanager
def _staged_folder(target: Path) -> Iterator[Path]:
    """A staging folder whose files become `target`'s once the block finished; on any failure nothing changes.

    A missing (or empty) `target` is staged as a hidden sibling and renamed into place in one step, so the folder
    appears complete or not at all; an existing one goes through [`atomic_directory`], whose staging lives inside
    it and whose swap replaces only the export files.
    """
    if _has_entries(target):
        with atomic_directory(target, owned=EXPORT_FILES + _TOKENIZER_FILES) as staging:
            yield staging
        return
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{STAGING_PREFIX}{target.name}-"
    for leftover in parent.glob(f"{prefix}*"):  # from an export that was killed before its cleanup
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield staging
        # The manifest a later `overwrite=True` reads to know which files this export wrote (and may replace).
        files = {entry.name: file_digest(entry) for entry in sorted(staging.iterdir()) if entry.is_file()}
        manifest = {"complete": True, "files": files, "folders": []}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # `mkdtemp` makes it private; the export is an ordinary folder
        if target.is_dir():
            shutil.rmtree(target)  # empty but for staging leftovers
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _probe_batch(classifier: FewShotClassifier, limit: int) -> dict[str, torch.Tensor]:
    """Two texts of different lengths (so no input dimension is specialised to 1), tokenised as `predict` does."""
    texts = ["an example", "a longer example sentence to classify, with more words than the first one"]
    encoded = classifier.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {name: encoded[name].to(torch.int64) for name in INPUT_NAMES}


def _export_graph(
    model: torch.nn.Module,
    probe: dict[str, torch.Tensor],
    file: Path,
    opset: int,
    external: bool,
    outputs: list[str],
):
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {0: batch, 1: sequence}
    with warnings.catch_warnings():
        # The exporter names each shared axis once and says so for every other input that has it.
        warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape constraints")
        try:
            torch.onnx.export(
                model,
                (probe["input_ids"], probe["attention_mask"]),
                str(file),
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                opset_version=opset,
                dynamo=True,
                external_data=external,
                dynamic_shapes={"input_ids": dims, "attention_mask": dims},
                verbose=False,
            )
        except Exception as err:  # the exporter raises many types; say which model and opset failed
            encoder = model.serving.encoder if isinstance(model, ScopedServingModel) else model.encoder
            raise RuntimeError(
                f"`torch.onnx.export` could not export the {type(encoder).__name__} encoder at opset {opset} "
                f"({type(err).__name__}: {err}); try the default opset {DEFAULT_OPSET} or another torch version."
            ) from err


def _session(ort: Any, file: Path, threads: int | None = None) -> Any:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _verify(
    ort: Any, file: Path, probe: dict[str, torch.Tensor], expected: list[np.ndarray], outputs: list[str]
) -> None:
    """The exported graph gives the torch outputs on the probe batch, or the export fails."""
    feed = {name: probe[name].numpy() for name in INPUT_NAMES}
    for name, got, want in zip(outputs, _session(ort, file).run(outputs, feed), expected):
        gap = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.shape == want.shape else 1.0
        if got.shape != want.shape or gap > VERIFY_ATOL:
            raise RuntimeError(
                f"The exported graph disagrees with the torch model on `{name}` (max gap {gap:.2e} > {VERIFY_ATOL}, "
                f"shapes {got.shape} vs {want.shape}); nothing was written. Please report it with your model type."
            )


def _place_graph(
    ort: Any,
    unfused: Path,
    file: Path,
    fuse: bool,
    check: tuple[dict[str, torch.Tensor], list[np.ndarray], list[str]],
    external: bool,
) -> dict[str, int]:
    """Put the graph at `file`: the fused one (`fuse`) if it reproduces the torch outputs, else the verified unfused
    one; return the fusions applied.

    The fusion is an optimisation of a graph already verified: where it fails, that graph stays, with a warning.
    """
    if fuse:
        try:
            applied = fuse_for_onnxruntime(unfused, file, external_data=f"{file.name}.data" if external else None)
            _verify(ort, file, *check)
            return applied
        except Exception as err:  # the rewriter and onnxruntime raise many types; the unfused graph is correct
            logger.warning(
                f"Kept the unfused ONNX graph: fusing it for onnxruntime failed ({type(err).__name__}: {err}). "
                "It is correct, only slower; pass `fuse=False` to skip the attempt."
            )
            for leftover in (file, file.with_name(f"{file.name}.data")):
                leftover.unlink(missing_ok=True)
    # Moved with its weights file, whose name the graph references, unchanged.
    for part in (unfused, unfused.with_name(f"{unfused.name}.data")):
        if part.exists():
            part.rename(file.with_name(part.name))
    return {}


def _quantize_int8(source: Path, destination: Path, external: bool) -> None:
    """Dynamic int8 quantisation (onnxruntime's quantiser): int8 weight matrices, activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(destination),
        weight_type=QuantType.QInt8,
        use_external_data_format=external,
        # One scale per output channel: per-tensor scales cost accuracy on many-way intent
        # (benchmarks/speed/serving.py).
        per_channel=True,
        # Only weight matrices: the attention products of two activations stay in float.
        extra_options={"MatMulConstBOnly": True},
    )
