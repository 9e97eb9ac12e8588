"""Why does full-way BANKING77 adaptation trail frozen encoder + logistic regression? Probes on the intent recipe's
saved adapter (run `accelerate launch recipes/fewshot_intent.py` first; it writes `outputs/fewshot_intent`).

1. Logistic regression (C by cross-validation on the shots) on the frozen and on the meta-initialised embeddings:
   does meta-training improve the representation itself?
2. The inner loop with more SGD steps, from the fresh and from the meta-learned adapter: does adaptation underfit?

    python benchmarks/intent_gap.py
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from hf_meta import FewShotClassifier, load_collection
from hf_meta.baselines import logistic_regression

DATA_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def main(adapter: str = "outputs/fewshot_intent") -> None:
    warnings.filterwarnings("ignore")
    banking = load_collection("banking77", DATA_DIR)
    names = banking["test"].features["label"].names
    texts, labels = banking["train_5"]["text"], [names[i] for i in banking["train_5"]["label"]]
    test_texts, test_labels = banking["test"]["text"], np.array([names[i] for i in banking["test"]["label"]])
    fresh = FewShotClassifier.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    meta = FewShotClassifier.from_pretrained(adapter)
    for name, clf in (("frozen", fresh), ("meta-init", meta)):
        accuracy = np.mean(logistic_regression(clf.embed(texts), labels, clf.embed(test_texts)) == test_labels)
        print(f"LR (CV C) on {name} embeddings: {100 * accuracy:.2f}", flush=True)
    for steps in (10, 20):
        for name, clf in (("fresh", fresh), ("meta", meta)):
            start = time.time()
            predictions = clf.fit(texts, labels, inner_steps=steps).predict(test_texts)
            accuracy = np.mean(np.asarray(predictions) == test_labels)
            print(f"{name} LoRA, {steps} inner steps: {100 * accuracy:.2f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
