"""Same-backbone baselines on frozen sentence embeddings: logistic regression and nearest prototype."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression


def logistic_regression(
    train_embeddings: np.ndarray, train_labels: Sequence, test_embeddings: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Predictions of a logistic regression fitted on frozen embeddings (scikit-learn defaults, as in SetFit's
    baselines)."""
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(train_embeddings, np.asarray(train_labels))
    return model.predict(test_embeddings)


def nearest_prototype(train_embeddings: np.ndarray, train_labels: Sequence, test_embeddings: np.ndarray) -> np.ndarray:
    """Predictions by cosine similarity to each class's mean embedding (Snell et al. 2017)."""
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    prototypes = np.stack([train_embeddings[labels == c].mean(0) for c in classes])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    test = test_embeddings / np.linalg.norm(test_embeddings, axis=1, keepdims=True)
    return classes[(test @ prototypes.T).argmax(1)]
