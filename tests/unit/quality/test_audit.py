"""run_audit: the metrics the CLI and the audit DAG publish, and the input it refuses."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from labelloop.quality.agreement import InputError, fleiss_kappa, krippendorff_alpha
from labelloop.quality.audit import run_audit


@pytest.fixture(scope="module")
def rte_gold_frame(rte_gold) -> pd.DataFrame:
    return rte_gold.reset_index()


def test_audit_of_rte_with_full_gold(rte_labels, rte_gold, rte_gold_frame) -> None:
    result = run_audit(rte_labels, rte_gold_frame, "dawid-skene", run_id="2024-05-01")
    metrics = result.metrics
    json.dumps(metrics, allow_nan=False)  # strict JSON as written to metrics.json
    assert metrics["run_id"] == "2024-05-01" and metrics["method"] == "dawid-skene"
    assert metrics["counts"] | {"labels": None} == {
        "annotations": 4040, "items": 404, "annotators": 164, "labels": None,
        "raters_per_item": {"min": 10, "max": 10},
    }  # fmt: skip
    agreement = metrics["agreement"]
    assert agreement["fleiss_kappa"] == pytest.approx(fleiss_kappa(rte_labels))
    assert agreement["krippendorff_alpha_nominal"] == pytest.approx(krippendorff_alpha(rte_labels))
    assert agreement["n_pairs"] == len(metrics["pairwise_kappa"]) > 0
    assert all(pair["n_shared"] >= 10 for pair in metrics["pairwise_kappa"])
    gold = metrics["gold"]
    # Scored before the overrides, so this is Dawid-Skene's own accuracy (0.936).
    assert gold["n_items"] == 404 and round(gold["consensus_accuracy"], 3) == 0.936
    assert sum(map(sum, gold["confusion"]["matrix"])) == 404
    assert gold["confusion"]["labels"] == ["entailed", "not_entailed"]
    # After the overrides every item carries its gold label.
    assert metrics["consensus"]["sources"] == {"gold": 404, "adjudicated": 0, "consensus": 0}
    assert (
        result.consensus.set_index("item_id")["label"]
        .sort_index()
        .equals(rte_gold.sort_index().rename("label"))
    )
    by_id = {row["annotator_id"]: row for row in metrics["annotators"]}
    assert sum(row["n_gold"] for row in by_id.values()) == 4040


def test_audit_with_partial_gold_and_adjudication(rte_labels, rte_gold_frame) -> None:
    gold = rte_gold_frame.iloc[:50]
    adjudicated = pd.Series({rte_gold_frame["item_id"].iloc[0]: "x_never", "1000": "entailed"})
    result = run_audit(rte_labels, gold, "majority", adjudicated=adjudicated, seed=3)
    assert result.metrics["consensus"]["sources"] == {"gold": 50, "adjudicated": 1,
                                                      "consensus": 353}  # fmt: skip
    assert result.metrics["consensus"]["n_iter"] is None
    annotators = pd.DataFrame(result.metrics["annotators"])
    assert annotators["n_gold"].sum() == 500
    assert annotators.loc[annotators["n_gold"] == 0, "accuracy"].isna().all()
    assert (
        result.metrics["review"]["spot_check"]
        == run_audit(rte_labels, gold, "majority", seed=3).metrics["review"]["spot_check"]
    )


def test_audit_without_gold_and_with_unequal_raters(rte_labels) -> None:
    labels = rte_labels.iloc[3:]  # the first item now has 7 raters
    metrics = run_audit(labels).metrics
    assert metrics["gold"] is None and metrics["agreement"]["fleiss_kappa"] is None
    assert metrics["counts"]["raters_per_item"] == {"min": 7, "max": 10}
    assert all(row["n_gold"] == 0 for row in metrics["annotators"])
    review = metrics["review"]
    confidence = run_audit(labels).consensus.set_index("item_id")["confidence"]
    assert review["low_confidence"] == confidence[confidence < 0.7].sort_values().index.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda lab, gold: (lab.assign(annotator_id="solo").drop_duplicates("item_id"), None),
         "only one annotator \\('solo'\\)"),
        (lambda lab, gold: (lab, gold.assign(label="Entailed")),
         "gold: label 'Entailed' \\(item_id '25'\\) is not among the annotators' labels "
         "\\(entailed, not_entailed\\)"),
        (lambda lab, gold: (lab, gold.assign(item_id="x" + gold["item_id"])),
         "none of its 404 item_ids occur in the labels"),
        (lambda lab, gold: (lab, pd.concat([gold, gold.iloc[:1].assign(label="entailed")])),
         "item_id '25' has more than one gold label"),
        (lambda lab, gold: (lab, gold.rename(columns={"label": "gold"})),
         "gold: missing column 'label'"),
    ],
)  # fmt: skip
def test_audit_refuses_bad_input(rte_labels, rte_gold_frame, change, message: str) -> None:
    labels, gold = change(rte_labels, rte_gold_frame)
    with pytest.raises(InputError, match=message):
        run_audit(labels, gold)


def test_audit_refuses_unknown_method(rte_labels) -> None:
    with pytest.raises(InputError, match="use one of dawid-skene, majority"):
        run_audit(rte_labels, method="mace")  # type: ignore[arg-type]
