"""Consensus labels from several annotators: majority vote, Dawid-Skene EM, and the
overrides that let gold and adjudicated answers replace them.

The classes follow crowd-kit's manners: parameters in ``__init__``, ``fit(data)`` and
``fit_predict(data)`` on the tidy frame, learned state in trailing-underscore attributes.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import logsumexp

from .agreement import ANNOTATOR, ITEM, LABEL, Encoded, check_answers, encode

SOURCES = ("gold", "adjudicated", "consensus")


def _vote_shares(enc: Encoded) -> np.ndarray:
    votes = enc.label_counts()
    return votes / votes.sum(axis=1, keepdims=True)


class _Aggregator:
    """What every consensus method learns: one label per item, with its probability."""

    labels_: pd.Series  # item_id -> consensus label
    probas_: pd.DataFrame  # item_id x label -> probability
    confidence_: pd.Series  # item_id -> probability of the consensus label

    def fit(self, data: pd.DataFrame) -> Self:
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame) -> pd.Series:
        """Fit on the tidy frame and return the consensus label per item_id."""
        return self.fit(data).labels_

    def to_frame(self) -> pd.DataFrame:
        """The consensus as a tidy frame: item_id, label, confidence."""
        return pd.DataFrame({LABEL: self.labels_, "confidence": self.confidence_}).reset_index()

    def _store(self, enc: Encoded, probas: np.ndarray, winner: np.ndarray) -> None:
        self.probas_ = pd.DataFrame(probas, index=enc.items, columns=enc.labels)
        self.labels_ = pd.Series(enc.labels.take(winner), index=enc.items, name=LABEL)
        confidence = probas[np.arange(len(winner)), winner]
        self.confidence_ = pd.Series(confidence, index=enc.items, name="confidence")


class MajorityVote(_Aggregator):
    """The label most annotators gave; confidence is its share of the item's votes.

    Tie rule (deterministic): among the tied labels, the one given most often over the
    whole frame; if still tied, the first in label order (sorted values, or the category
    order of a Categorical). Gold accuracy is deliberately not used to break ties: the
    consensus is scored against gold afterwards, and skill-weighted voting is what
    ``DawidSkene`` does properly.
    """

    def fit(self, data: pd.DataFrame) -> Self:
        enc = encode(data)
        votes = enc.label_counts()
        tied = votes == votes.max(axis=1, keepdims=True)
        frequency = np.where(tied, votes.sum(axis=0), -1)
        best = frequency == frequency.max(axis=1, keepdims=True)
        self._store(enc, _vote_shares(enc), best.argmax(axis=1))
        return self


class DawidSkene(_Aggregator):
    """Dawid & Skene (1979): EM over a confusion matrix per annotator and class priors.

    Starts from the majority-vote shares. ``smoothing`` is a pseudo-count added to every
    confusion-matrix cell and prior, so an annotator seen on five items does not get
    probabilities of exactly 0 or 1. Stops after ``n_iter`` iterations or when the mean
    log-likelihood per label improves by less than ``tol``. Exact posterior ties go to the
    first label in label order.

    Learned: ``labels_``, ``probas_``, ``confidence_``; ``priors_`` (Series by label);
    ``errors_`` (DataFrame indexed by (annotator_id, observed label), one column per true
    label, so ``errors_.loc[annotator]`` is that annotator's confusion matrix with
    columns summing to 1); ``n_iter_`` and ``log_likelihood_``.
    """

    priors_: pd.Series
    errors_: pd.DataFrame
    n_iter_: int
    log_likelihood_: float

    def __init__(self, n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01) -> None:
        if n_iter < 1 or tol < 0 or smoothing <= 0:
            raise ValueError("DawidSkene needs n_iter >= 1, tol >= 0 and smoothing > 0")
        self.n_iter = n_iter
        self.tol = tol
        self.smoothing = smoothing

    def fit(self, data: pd.DataFrame) -> Self:
        enc = encode(data)
        n_labels, n_annotators = enc.n_labels, enc.n_annotators
        # The M-step is responses.T @ probas, the E-step responses @ log(errors).
        responses = enc.responses()
        responses_t = responses.T.tocsr()
        probas = _vote_shares(enc)
        previous = -np.inf
        for iteration in range(1, self.n_iter + 1):
            priors, errors = self._m_step(responses_t, probas, n_annotators)
            log_joint = np.log(priors) + responses @ np.log(errors).reshape(-1, n_labels)
            log_evidence = logsumexp(log_joint, axis=1)
            probas = np.exp(log_joint - log_evidence[:, None])
            log_likelihood = float(log_evidence.sum() / len(enc.item))
            if log_likelihood - previous < self.tol:
                break
            previous = log_likelihood

        self._store(enc, probas, probas.argmax(axis=1))
        self.priors_ = pd.Series(priors, index=enc.labels, name="prior")
        rows = pd.MultiIndex.from_product([enc.annotators, enc.labels], names=[ANNOTATOR, LABEL])
        columns = enc.labels.rename("true_label")
        self.errors_ = pd.DataFrame(errors.reshape(-1, n_labels), index=rows, columns=columns)
        self.n_iter_ = iteration
        self.log_likelihood_ = log_likelihood
        return self

    def _m_step(
        self, responses_t: sparse.csr_matrix, probas: np.ndarray, n_annotators: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed priors and errors[a, observed, true] = P(a says observed | true)."""
        n_labels = probas.shape[1]
        counts = (responses_t @ probas).reshape(n_annotators, n_labels, n_labels)
        counts += self.smoothing
        errors = counts / counts.sum(axis=1, keepdims=True)
        priors = probas.sum(axis=0) + self.smoothing
        return priors / priors.sum(), errors


def apply_overrides(
    consensus: pd.DataFrame,
    gold: pd.Series | None = None,
    adjudicated: pd.Series | None = None,
) -> pd.DataFrame:
    """Replace consensus labels by known answers; adds ``source`` (gold/adjudicated/consensus).

    ``consensus`` has columns item_id, label, confidence; ``gold`` and ``adjudicated`` are
    Series of labels indexed by item_id. An overridden item gets confidence 1.0. Gold wins
    over adjudication: gold is the reference the whole audit is measured against, so a
    disagreeing adjudication is a finding to review, not a correction. Answers for items
    absent from ``consensus`` are ignored (nobody labelled them).
    """
    result = consensus.assign(source="consensus")
    for source, answers in (("adjudicated", adjudicated), ("gold", gold)):  # last one wins
        if answers is None:
            continue
        answers = check_answers(answers, source)
        hit = result[ITEM].isin(answers.index)
        result.loc[hit, LABEL] = result.loc[hit, ITEM].map(answers)
        result.loc[hit, "confidence"] = 1.0
        result.loc[hit, "source"] = source
    return result
