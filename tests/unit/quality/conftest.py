"""Shared data for the quality tests: the real RTE crowd labels and a synthetic generator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

RTE = Path(__file__).resolve().parents[2] / "data" / "rte-crowd-dev"


@pytest.fixture(scope="session")
def rte_labels() -> pd.DataFrame:
    """4,040 real MTurk labels (Snow et al. 2008), renamed to the library's columns."""
    frame = pd.read_csv(RTE / "crowd_labels.csv", dtype=str)
    return frame.rename(columns={"worker_id": "annotator_id"})


@pytest.fixture(scope="session")
def rte_gold() -> pd.Series:
    with open(RTE / "items.jsonl", encoding="utf-8") as lines:
        items = [json.loads(line) for line in lines]
    return pd.Series({item["id"]: item["gold"] for item in items}, name="label").rename_axis(
        "item_id"
    )


def matrix_to_tidy(matrix: np.ndarray) -> pd.DataFrame:
    """annotators x items matrix (NaN = no label) to the tidy frame."""
    annotator, item = np.nonzero(~np.isnan(matrix))
    return pd.DataFrame({
        "item_id": [f"i{j:03d}" for j in item],
        "annotator_id": [f"a{k:02d}" for k in annotator],
        "label": matrix[annotator, item],
    })  # fmt: skip


@pytest.fixture
def random_matrix() -> Callable[..., np.ndarray]:
    """annotators x items matrix of labels 0..n_labels-1 with a share of NaN (missing)."""

    def make(seed: int, n_annotators: int = 6, n_items: int = 80, n_labels: int = 4,
             missing: float = 0.3) -> np.ndarray:  # fmt: skip
        rng = np.random.default_rng(seed)
        truth = rng.integers(n_labels, size=n_items)
        noise = rng.integers(n_labels, size=(n_annotators, n_items))
        matrix = np.where(rng.random((n_annotators, n_items)) < 0.6, truth, noise).astype(float)
        matrix[rng.random(matrix.shape) < missing] = np.nan
        return matrix

    return make
