"""Box quality: IoU by hand, matching against brute force, gold F1 recomputed per image,
consensus on the real pedestrian crowd boxes, Label Studio conversion and validation."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from labelloop.quality.agreement import InputError
from labelloop.quality.boxes import (
    OVERALL,
    BoxAgreement,
    BoxConsensus,
    MajorityBoxes,
    box_gold_scores,
    box_iou,
    from_label_studio,
    match_boxes,
    to_label_studio,
)

PEDESTRIANS = Path(__file__).resolve().parents[2] / "data" / "pedestrian-boxes-dev"
COLUMNS = ["item_id", "annotator_id", "x", "y", "w", "h", "label"]
NONE = (np.nan, np.nan, np.nan, np.nan, None)


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def read_pedestrians(folder: Path = PEDESTRIANS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real crowd boxes and expert gold (Branson et al. 2017) as box frames, rows in
    the file's order (the plain majority rule depends on it)."""
    rows = []
    for line in (folder / "crowd_boxes.jsonl").read_text().splitlines():
        answer = json.loads(line)
        who = (answer["image_id"], answer["annotator_id"])
        rows += [(*who, *box, "pedestrian") for box in answer["boxes"]] or [(*who, *NONE)]
    gold = []
    for line in (folder / "images.jsonl").read_text().splitlines():
        image = json.loads(line)
        if image["gold"] is not None:
            item = image["image_id"]
            gold += [(item, *box, "pedestrian") for box in image["gold"]] or [(item, *NONE)]
    return frame(rows), pd.DataFrame(gold, columns=[c for c in COLUMNS if c != "annotator_id"])


@pytest.fixture(scope="module")
def pedestrians() -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_pedestrians()


def test_iou_by_hand() -> None:
    unit = [0, 0, 10, 10]
    others = [[5, 0, 10, 10], [0, 0, 5, 10], [0, 0, 10, 10], [20, 20, 5, 5], [10, 0, 5, 5],
              [5, 5, 10, 10], [3, 3, 0, 0]]  # fmt: skip
    # half overlap 50/150; inside 50/100; same; apart; touching; quarter 25/175; zero size
    expected = [1 / 3, 0.5, 1.0, 0.0, 0.0, 25 / 175, 0.0]
    assert box_iou([unit], others)[0] == pytest.approx(expected)
    assert box_iou([[3, 3, 0, 0]], [[3, 3, 0, 0]])[0, 0] == 0.0  # empty union


def brute_force_total(iou: np.ndarray, threshold: float) -> float:
    """Best total IoU over every one-to-one matching of qualifying pairs, by enumeration."""
    n, m = iou.shape
    best = 0.0
    for k in range(min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                values = iou[list(rows), list(cols)]
                if (values >= threshold).all():
                    best = max(best, float(values.sum()))
    return best


def test_matching_maximises_total_iou_like_brute_force() -> None:
    rng = np.random.default_rng(7)
    crowded = 0
    for _ in range(150):
        # Boxes jittered around 2 centres, so one box often overlaps several (the slow path).
        centres = rng.uniform(0, 30, size=(2, 2))
        def draw(n: int) -> np.ndarray:  # fmt: skip
            xy = centres[rng.integers(2, size=n)] + rng.normal(0, 1.5, size=(n, 2))
            return np.column_stack([xy, rng.uniform(8, 14, size=(n, 2))])
        a, b = draw(rng.integers(0, 5)), draw(rng.integers(0, 5))
        matches = match_boxes(a, b, threshold=0.5)
        iou = box_iou(a, b)
        assert matches["index_a"].is_unique and matches["index_b"].is_unique
        assert (matches["iou"] >= 0.5).all()
        assert matches["iou"].to_numpy() == pytest.approx(
            iou[matches["index_a"], matches["index_b"]])
        assert matches["iou"].sum() == pytest.approx(brute_force_total(iou, 0.5))
        qualifying = np.where(iou >= 0.5, iou, 0.0)
        rows, cols = linear_sum_assignment(qualifying, maximize=True)
        assert matches["iou"].sum() == pytest.approx(qualifying[rows, cols].sum())
        crowded += int(((iou >= 0.5).sum(axis=1) > 1).any() or ((iou >= 0.5).sum(axis=0) > 1).any())
    assert crowded > 10  # the Hungarian path was exercised, not only the easy one


def test_matching_only_pairs_same_labels() -> None:
    a, b = [[0, 0, 10, 10], [50, 0, 10, 10]], [[1, 0, 10, 10], [50, 0, 10, 10]]
    matches = match_boxes(a, b, labels_a=["car", "car"], labels_b=["car", "bus"])
    assert matches[["index_a", "index_b"]].values.tolist() == [[0, 0]]
    assert len(match_boxes(a, b)) == 2


def test_agreement_per_label_overall_and_pairs() -> None:
    boxes = frame([
        ("i1", "ann", 0, 0, 10, 10, "car"), ("i1", "ann", 50, 0, 10, 10, "bus"),
        ("i1", "bob", 1, 0, 10, 10, "car"), ("i1", "bob", 50, 0, 10, 10, "car"),
        ("i2", "ann", *NONE), ("i2", "bob", *NONE),
        ("i3", "ann", 0, 0, 10, 10, "car"), ("i3", "bob", *NONE),
    ])  # fmt: skip
    model = BoxAgreement().fit(boxes)
    summary = model.summary_.set_index("label")
    # car: i1 1 match of 1 + 2 boxes, i3 0 of 1 + 0: F1 = 2*1/(3+1); bus: 0 of 1.
    assert summary.loc["car", "f1"] == pytest.approx(0.5)
    assert summary.loc["bus", "f1"] == 0.0
    assert summary.loc[OVERALL, "f1"] == pytest.approx(2 * 1 / 5)
    assert summary.loc[OVERALL, "mean_iou"] == pytest.approx(90 / 110)
    # Full agreement: only i2 (both said "no object"); per label car also agrees nowhere else.
    assert summary.loc[OVERALL, "iou_agreement"] == pytest.approx(1 / 3)
    assert summary.loc["bus", "iou_agreement"] == pytest.approx(2 / 3)  # i2, i3: no bus
    pair = model.pairs_.set_index(["label", "annotator_a", "annotator_b"])
    ann_bob = pair.loc[(OVERALL, "ann", "bob")]
    assert (ann_bob["n_boxes_a"], ann_bob["n_boxes_b"], ann_bob["n_matched"]) == (3, 2, 1)
    assert ann_bob["precision"] == pytest.approx(1 / 3)
    assert ann_bob["recall"] == pytest.approx(1 / 2)
    assert pair.loc[(OVERALL, "bob", "ann"), "precision"] == pytest.approx(1 / 2)
    assert model.matrix().loc["ann", "bob"] == pytest.approx(0.4)
    # Without label matching the bus/car box pair matches too.
    assert BoxAgreement(match_labels=False).fit(boxes).summary_.iloc[-1]["f1"] == pytest.approx(
        2 * 2 / 5)
    assert model.items_.loc["i2", "iou_agreement"] == 1.0


def test_gold_scores_match_an_independent_per_image_count(pedestrians) -> None:
    boxes, gold = pedestrians
    scores = box_gold_scores(boxes, gold).set_index("annotator_id")
    coords = ["x", "y", "w", "h"]
    truth = {item: g[coords].dropna().to_numpy() for item, g in gold.groupby("item_id")}
    on_gold = boxes[boxes["item_id"].isin(truth)]
    answers = on_gold.groupby(["item_id", "annotator_id"]).indices
    values = on_gold[coords].to_numpy()
    counts: dict[str, np.ndarray] = {}
    for (item, who), rows in answers.items():
        mine = values[rows]
        mine = mine[~np.isnan(mine).any(axis=1)]
        iou = box_iou(mine, truth[item])
        qualifying = np.where(iou >= 0.5, iou, 0.0)
        rows, cols = linear_sum_assignment(qualifying, maximize=True) if iou.size else ([], [])
        hits = qualifying[rows, cols]
        hits = hits[hits >= 0.5]
        counts.setdefault(who, np.zeros(5))
        counts[who] += [len(hits), len(mine), len(truth[item]), hits.sum(), 1]
    for who, (tp, n_boxes, n_gold, iou_sum, n_items) in counts.items():
        row = scores.loc[who]
        assert (row["n_matched"], row["n_boxes"], row["n_gold_boxes"], row["n_items"]) == (
            tp, n_boxes, n_gold, n_items)
        assert row["n_missed"] == n_gold - tp and row["n_false"] == n_boxes - tp
        assert row["f1"] == pytest.approx(2 * tp / (n_boxes + n_gold))
        if tp:
            assert row["mean_iou"] == pytest.approx(iou_sum / tp)
    assert len(counts) == (scores["n_items"] > 0).sum() == 41  # 2 of 43 saw no gold
    assert np.nanmedian(scores["f1"]) == pytest.approx(0.88, abs=0.01)


def consensus_f1(boxes: pd.DataFrame, gold: pd.DataFrame) -> float:
    return float(box_gold_scores(boxes.assign(annotator_id="consensus"), gold)["f1"].iloc[0])


def halves(gold: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All gold images, then the even and odd positions of the sorted gold image ids."""
    ids = sorted(gold["item_id"].unique())
    return {"all": gold, "even": gold[gold["item_id"].isin(ids[0::2])],
            "odd": gold[gold["item_id"].isin(ids[1::2])]}  # fmt: skip


def test_consensus_and_majority_on_real_pedestrians(pedestrians) -> None:
    boxes, gold = pedestrians
    majority = MajorityBoxes().fit_predict(boxes)
    model = BoxConsensus().fit(boxes)
    assert consensus_f1(majority, gold) == pytest.approx(0.928, abs=0.002)
    assert consensus_f1(model.boxes_, gold) == pytest.approx(0.931, abs=0.002)
    # Without the merge of split clusters (docs/boxes.md) both rules lose.
    assert consensus_f1(MajorityBoxes(merge_iou=None).fit_predict(boxes), gold) == pytest.approx(
        0.926, abs=0.002)
    assert consensus_f1(BoxConsensus(merge_iou=None).fit_predict(boxes), gold) == pytest.approx(
        0.926, abs=0.002)
    assert model.boxes_["confidence"].between(0, 1).all()
    kept = model.boxes_.dropna(subset=["x"])
    assert (kept["confidence"] > 0.5).all()  # the support that kept them
    assert set(model.boxes_["item_id"]) == set(boxes["item_id"])  # every image answered
    assert model.annotators_["recall"].median() > 0.8
    assert len(model.clusters_) == len(MajorityBoxes().fit(boxes).clusters_)  # same clusters


def plain_majority(boxes: pd.DataFrame) -> pd.DataFrame:
    """The issue's baseline as a plain reader implements it: per image, the annotators in
    the order of the rows (the data file's order); the first one's boxes start clusters,
    each next one's boxes are matched one-to-one (Hungarian, maximum total IoU) to the
    clusters' current mean boxes at IoU >= 0.5, unmatched boxes start new clusters; keep
    the clusters drawn by more than half of the image's answers, with the mean box."""
    kept = []
    for item, rows in boxes.groupby("item_id", sort=False):
        clusters: list[list[np.ndarray]] = []
        answers = rows.groupby("annotator_id", sort=False)
        for _, answer in answers:
            drawn = answer[["x", "y", "w", "h"]].dropna().to_numpy()
            joined: set[int] = set()
            if clusters and len(drawn):
                iou = box_iou(drawn, [np.mean(c, axis=0) for c in clusters])
                for i, j in zip(*linear_sum_assignment(iou, maximize=True)):
                    if iou[i, j] >= 0.5:
                        clusters[j].append(drawn[i])
                        joined.add(i)
            clusters += [[box] for i, box in enumerate(drawn) if i not in joined]
        mine = [(item, *np.mean(c, axis=0), "pedestrian") for c in clusters
                if len(c) > answers.ngroups / 2]  # fmt: skip
        kept += mine or [(item, *NONE)]
    return pd.DataFrame(kept, columns=[c for c in COLUMNS if c != "annotator_id"])


def test_consensus_beats_the_issues_plain_majority_rule(pedestrians) -> None:
    """The requirement: BoxConsensus beats "keep a cluster more than half drew, mean box"
    (plain greedy clustering; the issue measured it at 0.913) on all gold images and on
    each half. Our MajorityBoxes, the same rule on our clustering, scores 0.928."""
    boxes, gold = pedestrians
    plain, consensus = plain_majority(boxes), BoxConsensus().fit_predict(boxes)
    assert consensus_f1(plain, gold) == pytest.approx(0.913, abs=0.001)  # the issue's figure
    for name, part in halves(gold).items():
        assert consensus_f1(consensus, part) > consensus_f1(plain, part) + 0.01, name


@pytest.mark.xfail(strict=True, reason="goal not met on pedestrian-boxes-dev: 0.931; even "
                   "crowd-box oracles of localisation reach 0.942 (docs/boxes.md, Errors)")
def test_consensus_reaches_the_goal_on_real_pedestrians(pedestrians) -> None:
    boxes, gold = pedestrians
    assert consensus_f1(BoxConsensus().fit_predict(boxes), gold) >= 0.94


def test_consensus_does_not_depend_on_row_order(pedestrians) -> None:
    boxes, _ = pedestrians
    shuffled = boxes.sample(frac=1, random_state=5).reset_index(drop=True)
    for rule in (MajorityBoxes, BoxConsensus):
        pd.testing.assert_frame_equal(rule().fit_predict(boxes), rule().fit_predict(shuffled))


def synthetic_crowd(seed: int = 0, n_images: int = 400) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Five annotators: three careful, two who miss most objects and draw false boxes."""
    rng = np.random.default_rng(seed)
    recall = np.array([0.95, 0.9, 0.9, 0.35, 0.35])
    false_boxes = np.array([0.02, 0.05, 0.05, 0.6, 0.6])
    rows, gold = [], []
    for image in range(n_images):
        objects = [(x, 0, 20, 40) for x in rng.choice(20, rng.integers(0, 4), replace=False) * 50]
        gold += [(image, *o, "person") for o in objects] or [(image, *NONE)]
        for who in range(5):
            mine = [(o[0] + rng.normal(0, 1), o[1] + rng.normal(0, 1), o[2], o[3])
                    for o in objects if rng.random() < recall[who]]
            mine += [(rng.uniform(1000, 2000), 0, 20, 40)] * int(rng.random() < false_boxes[who])
            rows += [(image, f"w{who}", *box, "person") for box in mine] or [(image, f"w{who}", *NONE)]
    return frame(rows), pd.DataFrame(gold, columns=[c for c in COLUMNS if c != "annotator_id"])


def test_consensus_learns_reliability_on_synthetic_crowd() -> None:
    boxes, gold = synthetic_crowd()
    model = BoxConsensus().fit(boxes)
    majority = consensus_f1(MajorityBoxes().fit_predict(boxes), gold)
    assert consensus_f1(model.boxes_, gold) > majority + 0.02
    recall, false_rate = model.annotators_["recall"], model.annotators_["false_rate"]
    assert recall["w0"] > recall["w3"] and false_rate["w0"] < false_rate["w3"]
    assert model.annotators_["vote"]["w0"] > model.annotators_["vote"]["w3"]
    by_posterior = BoxConsensus(keep_by="posterior").fit_predict(boxes)
    assert consensus_f1(by_posterior, gold) > majority + 0.02
    with pytest.raises(ValueError, match="keep_by='median'"):
        BoxConsensus(keep_by="median")


def test_no_object_answers_count_against_a_box() -> None:
    drew = [("i1", f"a{k}", 10, 10, 20, 40, "person") for k in range(3)]
    silent = [("i1", f"a{k}", *NONE) for k in range(3, 7)]
    kept = MajorityBoxes().fit_predict(frame(drew))
    assert kept["x"].tolist() == [10] and kept["confidence"].tolist() == [1.0]
    outvoted = MajorityBoxes().fit_predict(frame(drew + silent))
    assert outvoted["x"].isna().all() and outvoted["confidence"].tolist() == [pytest.approx(4 / 7)]


TIGHT, LOOSE = (10, 10, 20, 40), (2, 2, 36, 56)  # IoU 800 / 2016 = 0.40


def test_split_clusters_with_disjoint_annotators_merge() -> None:
    # a, b drew the person tight, c, d loose: no pair reaches IoU 0.5, so single linkage
    # makes two clusters of 2 of 4 votes, neither a majority.
    rows = [("i1", who, *box, "person") for who, box in
            [("a", TIGHT), ("b", TIGHT), ("c", LOOSE), ("d", LOOSE)]]  # fmt: skip
    split = MajorityBoxes(merge_iou=None).fit(frame(rows))
    assert split.clusters_["n_votes"].tolist() == [2, 2] and split.boxes_["x"].isna().all()
    merged = MajorityBoxes().fit(frame(rows))
    assert merged.clusters_["n_votes"].tolist() == [4]
    assert merged.boxes_[["x", "y", "w", "h"]].values.tolist() == [[6, 6, 28, 48]]  # the mean
    assert merged.boxes_["confidence"].tolist() == [1.0]
    # An annotator who drew both boxes says they are two objects: no merge.
    both = MajorityBoxes().fit(frame([*rows, ("i1", "a", *LOOSE, "person")]))
    assert sorted(both.clusters_["n_votes"]) == [2, 3]
    assert len(BoxConsensus().fit(frame(rows)).clusters_) == 1  # the same clustering
    with pytest.raises(ValueError, match="threshold"):
        MajorityBoxes(merge_iou=1.5)


def test_consensus_box_is_the_weighted_median_of_edges() -> None:
    # Four annotators box one person tight on several images; a fifth draws it loose and
    # shifted. The mean box moves toward the loose one; the weighted median does not.
    rows = []
    for image in range(6):
        rows += [(image, f"t{k}", 10 + k % 2, 10, 20, 40, "person") for k in range(4)]
        rows.append((image, "loose", 6, 6, 28, 48, "person"))
    majority = MajorityBoxes().fit_predict(frame(rows))
    consensus = BoxConsensus().fit(frame(rows))
    assert majority["x"].tolist() == [pytest.approx(9.6)] * 6
    # Per edge: left edges 6 (light), 10, 10, 11, 11 -> 10; right 30, 30, 31, 31, 34 -> 31.
    assert consensus.boxes_[["x", "y", "w", "h"]].values.tolist() == [[10, 10, 21, 40]] * 6
    weight = consensus.annotators_["weight"]
    assert weight["loose"] < weight["t0"]
    # Two equally good annotators: the half falls between their edges, so their mean.
    pair = [(image, who, x, 10, 20, 40, "person") for image in range(3)
            for who, x in [("a", 10), ("b", 12)]]  # fmt: skip
    assert BoxConsensus().fit_predict(frame(pair))["x"].tolist() == [11.0] * 3


def test_images_where_nobody_drew_get_a_no_object_row() -> None:
    rows = frame([("i1", "a", *NONE), ("i1", "b", *NONE), ("i2", "a", 0, 0, 10, 10, "car"),
                  ("i2", "b", *NONE)])  # fmt: skip
    for rule in (MajorityBoxes, BoxConsensus):
        nothing = rule().fit_predict(rows[rows["item_id"] == "i1"])
        assert nothing["x"].isna().all() and nothing["confidence"].tolist() == [1.0]
        assert rule().fit_predict(rows)["item_id"].tolist() == ["i1", "i2"]


def test_fused_box_and_weighted_label_vote() -> None:
    rows = [("i1", "a", 0, 0, 10, 10, "cat"), ("i1", "b", 2, 0, 10, 10, "cat"),
            ("i1", "c", 1, 0, 10, 10, "dog")]  # fmt: skip
    result = MajorityBoxes().fit_predict(frame(rows))
    assert result[["x", "y", "w", "h", "label"]].values.tolist() == [[1.0, 0.0, 10.0, 10.0, "cat"]]


def test_label_studio_round_trip() -> None:
    result = [{"id": "r1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
               "original_width": 1280, "original_height": 720, "image_rotation": 0,
               "value": {"x": 10.0, "y": 50.0, "width": 2.5, "height": 10.0, "rotation": 0,
                         "rectanglelabels": ["pedestrian"]}},
              {"type": "choices", "value": {"choices": ["ok"]}}]  # fmt: skip
    boxes = from_label_studio([{"item_id": 7, "annotator_id": "ann", "result": result},
                               {"item_id": 8, "annotator_id": "ann", "result": []}])  # fmt: skip
    assert boxes.iloc[0][["x", "y", "w", "h", "label"]].tolist() == [128, 360, 32, 72, "pedestrian"]
    assert boxes.iloc[1][["x", "w"]].isna().all()
    back = to_label_studio(boxes[boxes["item_id"] == 7], width=1280, height=720)
    assert back == [{k: v for k, v in result[0].items() if k != "id"}]
    assert to_label_studio(boxes[boxes["item_id"] == 8], 1280, 720) == []
    scored = to_label_studio(boxes.iloc[:1].assign(confidence=0.9), 1280, 720)
    assert scored[0]["score"] == 0.9


@pytest.mark.parametrize(("change", "message"), [
    ({"rotation": 30}, "rotation=30"),
    ({"width": 0}, "width=0"),
    ({"x": -1}, "value.x=-1 is outside 0-100"),
    ({"x": 99}, r"x\+width=101.5"),
])  # fmt: skip
def test_label_studio_refuses_bad_rectangles(change: dict, message: str) -> None:
    value = {"x": 10, "y": 5, "width": 2.5, "height": 10, "rotation": 0,
             "rectanglelabels": ["pedestrian"]}  # fmt: skip
    result = {"id": "r9", "type": "rectanglelabels", "original_width": 100,
              "original_height": 100, "value": {**value, **change}}  # fmt: skip
    with pytest.raises(InputError, match=message) as error:
        from_label_studio([{"item_id": "t1", "annotator_id": "ann", "result": [result]}])
    assert "item_id='t1'" in str(error.value) and "id='r9'" in str(error.value)


@pytest.mark.parametrize(("rows", "message"), [
    ([("i1", "a", 0, 0, -1, 5, "car")], "row 0 has w=-1"),
    ([("i1", "a", 0, 0, 5, np.nan, "car")], "row 0 fills only some"),
    ([("i1", "a", 0, 0, 5, 5, None)], "row 0 fills only some"),
    ([("i1", "a", "left", 0, 5, 5, "car")], "row 0 has x='left'"),
    ([("i1", "a", 0, 0, 5, 5, "car"), ("i1", "a", *NONE)], "item_id='i1' annotator_id='a' has"),
    ([("i1", None, 0, 0, 5, 5, "car")], "row 0 has an empty annotator_id"),
])  # fmt: skip
def test_box_frame_validation(rows: list[tuple], message: str) -> None:
    with pytest.raises(InputError, match=message):
        BoxAgreement().fit(frame(rows))


def test_box_frame_needs_its_columns() -> None:
    renamed = frame([("i1", "a", 0, 0, 5, 5, "car")]).rename(columns={"annotator_id": "worker"})
    with pytest.raises(InputError, match="rename column 'worker' to 'annotator_id'"):
        MajorityBoxes().fit(renamed)
    with pytest.raises(ValueError, match="threshold"):
        BoxAgreement(threshold=0)
