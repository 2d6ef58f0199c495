"""Bring your own detector: the pre-label learner of rectangles, around the trainer the spec names.

``model.trainer: "mypkg.detect:train"`` is called as ``train(table, **model.params)`` with the
consensus boxes (``TRAIN_COLUMNS``, images as local files) and returns a model MLflow can log: an
``mlflow.pyfunc.PythonModel``, or a scikit-learn estimator (MLflow's native ``sklearn`` flavor).
Either way it is served as a pyfunc whose ``predict`` takes one row per image (``PREDICT_COLUMNS``)
and returns one row per candidate box (``BOX_OUTPUT``). labelloop logs, registers, evaluates on gold
(micro box F1 at IoU >= 0.5, ``quality.boxes.box_gold_scores``) and promotes it like its own models.

A box scored at ``KEEP`` or more is a pre-label; the prediction's score is the probability that the
pre-label is exactly right, boxes taken as independent: the product of the kept boxes' scores and
of 1 - score of the candidates left out (so uncertainty = 1 - it orders the queue, as for every kind).
"""

from __future__ import annotations

import importlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from labelloop.errors import InputError
from labelloop.model.learner import Prelabel

if TYPE_CHECKING:
    import pandas as pd

    from labelloop.spec import Model
    from labelloop.tasktypes import TaskType

#: What the trainer receives, one row per consensus box (an image with no object: one row, box empty).
TRAIN_COLUMNS = ("item_id", "image", "path", "width", "height", "x", "y", "w", "h", "label", "confidence")
#: What the model's predict receives, one row per image.
PREDICT_COLUMNS = ("image", "path", "width", "height")
#: What it returns, one row per candidate box; ``row`` is the image's position in the input.
BOX_OUTPUT = ("row", "x", "y", "w", "h", "label", "score")
#: Candidates scored at least this become pre-labels.
KEEP = 0.5
#: Images read and predicted at once (remote ones are downloaded to a temporary folder first).
CHUNK = 64
LOCAL_FILES_URL = "/data/local-files/?d="


def trainer_of(entry_point: str) -> Any:
    """The function ``module.path:function`` names, imported now (at task time, never at DAG parse)."""
    module, _, name = entry_point.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"model.trainer {entry_point!r} cannot be imported ({error}); install the package that "
                         f"defines it where the retrain task and the backend run") from None
    if not callable(function):
        raise ValueError(f"model.trainer {entry_point!r} is not a function")
    return function


def image_path(uri: str, folder: Path, n: int) -> str:
    """A local file holding the image the task data names: Label Studio's local-files URL (under
    ``settings.local_files_root``), ``file://`` or an absolute path, else any object store URI
    (``s3://``: the Airflow connection ``aws_default``), downloaded into ``folder``."""
    from labelloop import settings

    if uri.startswith(LOCAL_FILES_URL):
        return str(settings.local_files_root() / unquote(uri[len(LOCAL_FILES_URL):]))
    if uri.startswith("file://"):
        return unquote(uri.removeprefix("file://"))
    if uri.startswith("/"):
        return uri
    if "://" not in uri:
        raise InputError(f"image {uri!r:.120} is not a URI; the detector reads Label Studio local-files URLs, "
                         f"file://, absolute paths and object store URIs (s3://...)")
    from labelloop.layout import storage_path

    local = folder / f"{n}{Path(uri.split('?')[0]).suffix}"
    # Without a connection an s3:// path would fall back to boto3's own credentials and endpoint.
    conn_id = settings.AWS_CONN_ID if uri.startswith("s3://") else None
    with storage_path(uri, conn_id).open("rb") as source, local.open("wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    return str(local)


@contextmanager
def local_images(uris: Sequence[str]) -> Iterator[list[str]]:
    """Local paths of the images, valid inside the block (downloads are deleted after it)."""
    with tempfile.TemporaryDirectory(prefix="labelloop-images-") as folder:
        yield [image_path(uri, Path(folder), n) for n, uri in enumerate(uris)]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the image's header (Pillow decodes no pixels for it)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def as_pyfunc(fitted: Any) -> Any:
    """The model as the backend serves it (``mlflow.pyfunc.PyFuncModel``): a model from the registry
    is one already; a fresh one from the trainer is saved and loaded back, which also proves it
    survives logging before anything is registered."""
    import mlflow

    if isinstance(fitted, mlflow.pyfunc.PyFuncModel):
        return fitted
    with tempfile.TemporaryDirectory(prefix="labelloop-detector-") as folder:
        path = str(Path(folder) / "model")
        _flavor(fitted).save_model(**{_model_argument(fitted): fitted}, path=path, pip_requirements=requirements())
        return mlflow.pyfunc.load_model(path)


def _flavor(fitted: Any) -> Any:
    """The MLflow flavor module that logs ``fitted``; anything else is refused, naming what is accepted."""
    import mlflow
    from sklearn.base import BaseEstimator

    if isinstance(fitted, mlflow.pyfunc.PythonModel):
        return mlflow.pyfunc
    if isinstance(fitted, BaseEstimator):
        return mlflow.sklearn
    raise TypeError(f"the trainer returned a {type(fitted).__module__}.{type(fitted).__name__}; return an "
                    f"mlflow.pyfunc.PythonModel (wrap any framework's detector in one) or a scikit-learn estimator")


def _model_argument(fitted: Any) -> str:
    import mlflow

    return "python_model" if isinstance(fitted, mlflow.pyfunc.PythonModel) else "sk_model"


def requirements() -> list[str]:
    """Given explicitly (inferring them costs seconds): what labelloop's own side of the model needs."""
    import mlflow
    import numpy
    import pandas
    import PIL
    import sklearn

    return [f"mlflow=={mlflow.__version__}", f"pandas=={pandas.__version__}", f"numpy=={numpy.__version__}",
            f"pillow=={PIL.__version__}", f"scikit-learn=={sklearn.__version__}"]


class DetectorLearner:
    """Rectangles (``<RectangleLabels>`` on ``<Image>``): the project's own detector."""

    flavor = "pyfunc"
    metrics = ("box_f1",)

    def __init__(self, task_type: TaskType) -> None:
        self.task_type = task_type
        self.labels = list(task_type.control.labels)

    def describe(self, model: Model) -> str:
        return f"detector by {model.trainer}"

    def fit(self, model: Model, train: pd.DataFrame) -> Any:
        """The trainer's model from the consensus boxes (``TRAIN_COLUMNS``)."""
        assert model.trainer is not None, "the spec requires model.trainer for rectangles"
        trainer = trainer_of(model.trainer)
        if train.empty:
            raise ValueError("training needs images; the audit's consensus has none that are trusted")
        with local_images(list(dict.fromkeys(train["text"]))) as paths:
            table = training_table(train, dict(zip(dict.fromkeys(train["text"]), paths)))
            fitted = trainer(table, **model.params)
        _flavor(fitted)  # refuse what MLflow cannot log before training is reported done
        return fitted

    def log_model(self, fitted: Any, registered_model_name: str, train: pd.DataFrame) -> Any:
        """Log and register with the model's own flavor (pyfunc or sklearn); served as a pyfunc."""
        return _flavor(fitted).log_model(**{_model_argument(fitted): fitted}, name="model",
                                         registered_model_name=registered_model_name,
                                         pip_requirements=requirements())

    def boxes(self, fitted: Any, images: list[str]) -> list[tuple[pd.DataFrame, tuple[int, int]]]:
        """Per image: its candidate boxes (``x, y, w, h, label, score``, pixels, inside the image) and its size."""
        import pandas as pd

        model = as_pyfunc(fitted)
        found = []
        for start in range(0, len(images), CHUNK):
            chunk = images[start:start + CHUNK]
            with local_images(chunk) as paths:
                sizes = [image_size(path) for path in paths]
                frame = pd.DataFrame({"image": chunk, "path": paths, "width": [w for w, _ in sizes],
                                      "height": [h for _, h in sizes]}, columns=list(PREDICT_COLUMNS))
                output = model.predict(frame)
            found += zip(self.checked(output, sizes), sizes)
        return found

    def checked(self, output: Any, sizes: list[tuple[int, int]]) -> list[pd.DataFrame]:
        """The model's rows per input image, refused with a clear error when they break the contract;
        boxes are clipped to the image (a detector's box may overhang an edge) and empty ones dropped."""
        import numpy as np
        import pandas as pd

        rows = pd.DataFrame(output)
        missing = [column for column in BOX_OUTPUT if column not in rows.columns]
        if missing:
            raise ValueError(f"the detector's predict returned columns {list(rows.columns)}; it must return "
                             f"{list(BOX_OUTPUT)} (missing {missing}); see docs/model.md#bring-your-own-detector")
        numbers = rows[["row", "x", "y", "w", "h", "score"]].astype(float)
        if not np.isfinite(numbers.to_numpy()).all() or not numbers["score"].between(0, 1).all():
            raise ValueError("the detector's predict returned a box with a missing or infinite number, or a score "
                             "outside 0-1")
        if not numbers["row"].isin(range(len(sizes))).all():
            raise ValueError(f"the detector's predict returned a row outside 0-{len(sizes) - 1} (the input's rows)")
        unknown = sorted(set(rows["label"]) - set(self.labels))
        if unknown:
            raise ValueError(f"the detector's predict returned labels {unknown}; the control offers {self.labels}")
        found = []
        for index, (width, height) in enumerate(sizes):
            own = numbers[numbers["row"] == index]
            left, top = own["x"].clip(0, width), own["y"].clip(0, height)
            right, bottom = (own["x"] + own["w"]).clip(0, width), (own["y"] + own["h"]).clip(0, height)
            boxes = pd.DataFrame({"x": left, "y": top, "w": right - left, "h": bottom - top,
                                  "label": rows.loc[own.index, "label"], "score": own["score"]})
            found.append(boxes[(boxes["w"] > 0) & (boxes["h"] > 0)].reset_index(drop=True))
        return found

    def predict(self, fitted: Any, texts: list[str]) -> list[Prelabel]:
        """One prediction per image URI (the task data's image field): rectangle results of the boxes
        scored >= ``KEEP``, each with its score; the prediction's score as the module says."""
        found = []
        for boxes, (width, height) in self.boxes(fitted, texts):
            kept = boxes["score"] >= KEEP
            score = math.prod(boxes.loc[kept, "score"]) * math.prod(1 - boxes.loc[~kept, "score"])
            rows = boxes[kept].rename(columns={"score": "confidence"}).assign(original_width=width,
                                                                                original_height=height)
            found.append(Prelabel(self.task_type.results(rows), float(score)))
        return found

    def evaluate(self, fitted: Any, evaluation: pd.DataFrame) -> dict[str, Any]:
        """Micro box precision, recall and F1 at IoU >= 0.5 against the gold boxes, with the same
        one-to-one matching as the audit's gold scores, and the mean IoU of matched boxes."""
        import pandas as pd

        from labelloop.quality.boxes import box_gold_scores

        images = evaluation.drop_duplicates("item_id")
        predicted = []
        for item, (boxes, _) in zip(images["item_id"], self.boxes(fitted, images["text"].tolist())):
            kept = boxes[boxes["score"] >= KEEP]
            predicted.append(kept.drop(columns="score").assign(item_id=item) if len(kept) else
                             pd.DataFrame({"item_id": [item], "x": [None], "y": [None], "w": [None], "h": [None],
                                           "label": [None]}))
        frame = pd.concat(predicted, ignore_index=True).astype({c: float for c in ("x", "y", "w", "h")})
        gold = evaluation[["item_id", "x", "y", "w", "h", "label"]]
        [scores] = box_gold_scores(frame.assign(annotator_id="model"), gold).to_dict("records")
        nothing_either_side = scores["n_boxes"] == 0 and scores["n_gold_boxes"] == 0
        return {
            "box_f1": 1.0 if nothing_either_side else float(scores["f1"]),
            "precision": _number(scores["precision"]), "recall": _number(scores["recall"]),
            "mean_iou": _number(scores["mean_iou"]), "n_eval": len(images),
            "n_gold_boxes": int(scores["n_gold_boxes"]), "n_boxes": int(scores["n_boxes"]),
            "n_missed": int(scores["n_missed"]), "n_false": int(scores["n_false"]),
        }


def training_table(train: pd.DataFrame, paths: dict[str, str]) -> pd.DataFrame:
    """The trainer's table (``TRAIN_COLUMNS``) from the retrain's tidy rows (``text`` is the image URI)."""
    table = train.rename(columns={"text": "image", "original_width": "width", "original_height": "height"})
    table = table.assign(path=table["image"].map(paths))
    if "confidence" not in table.columns:
        table = table.assign(confidence=None)
    unsized = table["width"].isna() | table["height"].isna()
    if unsized.any():  # no size in the task data: the image's own header gives it
        sizes = {path: image_size(path) for path in table.loc[unsized, "path"].unique()}
        table.loc[unsized, "width"] = table.loc[unsized, "path"].map(lambda path: sizes[path][0])
        table.loc[unsized, "height"] = table.loc[unsized, "path"].map(lambda path: sizes[path][1])
    return table[list(TRAIN_COLUMNS)].reset_index(drop=True)


def _number(value: Any) -> float:
    """NaN (nothing to measure) as 0, so MLflow logs a number."""
    return 0.0 if value is None or value != value else float(value)
