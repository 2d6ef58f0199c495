"""The span pre-label model (``<Labels>`` on ``<Text>``): a spaCy named-entity recognizer.

A blank English pipeline (spaCy's rule-based tokenizer, no downloaded weights) with a
trainable ``beam_ner``: the same transition-based recognizer as spaCy's ``ner``, decoding with
a beam, which is what gives it probabilities. Greedy ``ner`` has none; the beam keeps the
``beam_width`` best analyses of a text with their normalized probabilities, so

- the prediction's score is the probability of the analysis it predicts (uncertainty = 1 - it:
  the queue puts first the texts where the model is torn between readings), and
- each span's score is the total probability of the analyses containing it.

Training is a few epochs of ``nlp.update`` on the consensus spans, aligned to tokens
(``alignment_mode="contract"``: a span cutting a token keeps the tokens wholly inside it; a
span with none is left out, and overlapping spans keep the longest).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from labelloop.model.learner import Prelabel
from labelloop.spec import Model

if TYPE_CHECKING:
    import pandas as pd
    from spacy.language import Language

    from labelloop.tasktypes import TaskType

PIPE = "beam_ner"


@dataclass(frozen=True)
class Training:
    """``model.params`` of a spans model (the defaults learn CoNLL's 4 types from 500 sentences)."""

    epochs: int = 10
    dropout: float = 0.2
    batch_size: int = 16
    beam_width: int = 8
    seed: int = 0

    @classmethod
    def of(cls, model: Model) -> Training:
        if model.estimator is not None:
            raise ValueError(f"model.estimator {model.estimator!r}: a spans model is spaCy's beam_ner, not a "
                             f"scikit-learn estimator; remove estimator (tune it with model.params)")
        accepted = {field.name for field in fields(cls)}
        unknown = sorted(set(model.params) - accepted)
        if unknown:
            raise ValueError(f"model.params {unknown} are not parameters of the spans model; accepted: "
                             f"{sorted(accepted)}")
        return cls(**model.params)


class SpanLearner:
    flavor = "spacy"
    metrics = ("span_f1",)

    def __init__(self, task_type: TaskType) -> None:
        self.task_type = task_type
        self.labels = list(task_type.control.labels)

    def describe(self, model: Model) -> str:
        return f"spaCy {PIPE} (blank en)"

    def fit(self, model: Model, train: pd.DataFrame) -> Language:
        import spacy
        from spacy.training import Example

        settings = Training.of(model)
        spacy.util.fix_random_seed(settings.seed)
        nlp = spacy.blank("en")
        recognizer = nlp.add_pipe(PIPE, config={"beam_width": settings.beam_width})
        for label in self.labels:
            recognizer.add_label(label)
        examples = []
        for text, spans in _items(train):
            doc = nlp.make_doc(text)
            aligned = [doc.char_span(start, end, label=label, alignment_mode="contract")
                       for start, end, label in spans]
            entities = spacy.util.filter_spans([span for span in aligned if span is not None])
            examples.append(Example.from_dict(doc, {"entities": [(s.start_char, s.end_char, s.label_)
                                                                 for s in entities]}))
        if not any(example.reference.ents for example in examples):
            raise ValueError(f"training needs spans; the {len(examples)} training items have none")
        optimizer = nlp.initialize(lambda: examples)
        order = random.Random(settings.seed)
        for _ in range(settings.epochs):
            order.shuffle(examples)
            for batch in spacy.util.minibatch(examples, size=settings.batch_size):
                nlp.update(batch, sgd=optimizer, drop=settings.dropout)
        return nlp

    def predict(self, fitted: Language, texts: list[str]) -> list[Prelabel]:
        recognizer = fitted.get_pipe(PIPE)
        docs = [fitted.make_doc(text) for text in texts]
        beams = recognizer.predict(docs)
        recognizer.set_annotations(docs, beams)
        found = []
        for doc, beam, scored in zip(docs, beams, recognizer.scored_ents(beams)):
            results = [{**self.task_type._result("labels", {"start": span.start_char, "end": span.end_char,
                                                            "text": span.text, "labels": [span.label_]}),
                        "score": round(float(scored.get((span.start, span.end, span.label_), 0.0)), 6)}
                       for span in doc.ents]
            found.append(Prelabel(results, min(1.0, float(max(beam.probs, default=1.0)))))
        return found

    def evaluate(self, fitted: Language, evaluation: pd.DataFrame) -> dict[str, Any]:
        """Micro exact-span precision, recall and F1 on the gold items (``quality.spans.span_f1``),
        and F1 per label."""
        import pandas as pd

        from labelloop.quality.spans import gold_span_scores, span_f1

        items = list(dict.fromkeys(evaluation["item_id"]))
        texts = evaluation.drop_duplicates("item_id").set_index("item_id").loc[items, "text"].tolist()
        rows = []
        for item, prediction in zip(items, self.predict(fitted, texts)):
            spans = [result["value"] for result in prediction.result]
            rows += [{"item_id": item, "start": v["start"], "end": v["end"], "label": v["labels"][0]} for v in spans]
            if not spans:
                rows.append({"item_id": item, "start": pd.NA, "end": pd.NA, "label": pd.NA})
        predicted = pd.DataFrame(rows, columns=["item_id", "start", "end", "label"])
        gold = evaluation[["item_id", "start", "end", "label"]]
        scores = span_f1(predicted, gold, labels=self.labels)
        metrics: dict[str, Any] = {
            "span_f1": float(scores["f1"]), "precision": float(scores["precision"]),
            "recall": float(scores["recall"]), "n_eval": len(items), "n_gold_spans": int(scores["n_gold_spans"]),
        }
        by_label = gold_span_scores(predicted.assign(annotator_id="model"), gold, labels=self.labels, by_label=True)
        for row in by_label.itertuples():
            metrics[f"f1_{row.label}"] = 0.0 if pd.isna(row.f1) else float(row.f1)
        return metrics


def _items(frame: pd.DataFrame) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(text, spans) per item of tidy span rows, in first-seen order."""
    items: dict[Any, tuple[str, list[tuple[int, int, str]]]] = {}
    for item, text, start, end, label in zip(frame["item_id"], frame["text"], frame["start"], frame["end"],
                                             frame["label"]):
        spans = items.setdefault(item, (text, []))[1]
        if isinstance(label, str):
            spans.append((int(start), int(end), label))
    return list(items.values())
