"""Same-backbone baselines on frozen sentence embeddings: logistic regression and nearest prototype."""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from threadpoolctl import threadpool_limits

C_GRID = (0.1, 1.0, 10.0, 100.0)


def logistic_regression(
    train_embeddings: np.ndarray, train_labels: Sequence, test_embeddings: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Predictions of a logistic regression fitted on frozen embeddings.

    The inverse regularisation `C` is chosen by stratified cross-validation on the labelled examples only (never
    the test set): on L2-normalised embeddings scikit-learn's default `C=1` underfits. With a single example per
    class there is nothing to cross-validate and `C=1` is used.
    """
    labels = np.asarray(train_labels)
    folds = min(5, int(np.unique(labels, return_counts=True)[1].min()))
    if folds >= 2:
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, scoring="accuracy", max_iter=2000, random_state=seed)
    else:
        model = LogisticRegression(max_iter=2000, random_state=seed)
    # One thread for BLAS and scikit-learn's OpenMP: the products are small, and their threads competing with
    # torch's OpenMP threads (which keep spinning after every torch call) made the fit 5-7x slower on 2 cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 announces API changes irrelevant here
        # 1 shot: as many classes as examples, which scikit-learn takes for a sign of a regression target.
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        model.fit(train_embeddings, labels)
        return model.predict(test_embeddings)


def nearest_prototype(train_embeddings: np.ndarray, train_labels: Sequence, test_embeddings: np.ndarray) -> np.ndarray:
    """Predictions by cosine similarity to each class's mean embedding (Snell et al. 2017)."""
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    prototypes = np.stack([train_embeddings[labels == c].mean(0) for c in classes])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    test = test_embeddings / np.linalg.norm(test_embeddings, axis=1, keepdims=True)
    return classes[(test @ prototypes.T).argmax(1)]


SETFIT_MISSING = "setfit is not installed: pip install 'hf_meta[setfit]' to run the SetFit baseline"


def setfit_available() -> bool:
    """Whether the optional `setfit` extra is installed (checked without importing it)."""
    return importlib.util.find_spec("setfit") is not None


class SetFitBaseline:
    """SetFit (Tunstall et al. 2022) on the same backbone, behind the `fit` / `predict` interface of
    [`FewShotClassifier`] so that [`compare_methods`] scores it on the same shots. Needs the `setfit` extra.

    Each `fit` starts again from the pretrained sentence encoder: contrastive fine-tuning of the whole body on
    `num_iterations` positive and negative pairs per example, then a logistic-regression head (SetFit's defaults).

    Example:
        ```python
        >>> clf = SetFitBaseline("sentence-transformers/all-MiniLM-L6-v2").fit(texts, labels)
        >>> clf.predict(["my card still hasn't arrived"])
        ```
    """

    def __init__(self, model_name_or_path: str, num_iterations: int = 20, batch_size: int = 16, seed: int = 0):
        if not setfit_available():
            raise ImportError(SETFIT_MISSING)
        self.model_name_or_path = model_name_or_path
        self.num_iterations = num_iterations
        self.batch_size = batch_size
        self.seed = seed
        self.model = None

    def fit(self, texts: Sequence[str], labels: Sequence) -> SetFitBaseline:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        from ..modeling import resolve_model_path

        self.model = SetFitModel.from_pretrained(resolve_model_path(self.model_name_or_path))
        data = Dataset.from_dict({"text": list(texts), "label": list(labels)})
        with tempfile.TemporaryDirectory() as output_dir:  # SetFit writes checkpoints we do not keep
            args = TrainingArguments(
                output_dir=output_dir,
                batch_size=self.batch_size,
                num_epochs=1,
                num_iterations=self.num_iterations,
                seed=self.seed,
                report_to="none",
                show_progress_bar=False,
                save_strategy="no",
            )
            Trainer(model=self.model, args=args, train_dataset=data).train()
        return self

    def predict(self, texts: Sequence[str]) -> list:
        if self.model is None:
            raise RuntimeError("This SetFitBaseline is not fitted yet; call `fit(texts, labels)` first.")
        return self.model.predict(list(texts), batch_size=64, as_numpy=True).tolist()
