"""A wrong spec fails with a message naming the file, the field and what is accepted."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from labelloop.spec import SpecError, load_spec, load_specs

REPO = Path(__file__).resolve().parents[2]


def test_shipped_specs_load() -> None:
    specs = load_specs(REPO / "include" / "projects")
    sms = next(spec for spec in specs if spec.name == "sms_spam")
    assert sms.labels == ["ham", "spam"]
    assert sms.object_name == "text"
    assert sms.source.uri.endswith("/raw/sms_spam/")
    assert "spam" in sms.guidelines_html


def rewrite(make_spec, mutate) -> Path:
    path = make_spec()
    raw = yaml.safe_load(path.read_text())
    mutate(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda raw: raw.update(labels=["ham", "spam", "eggs"]), "offers ['ham', 'spam'], but labels is"),
        (lambda raw: raw.update(control_name="answer"), "has no control named 'answer'"),
        (lambda raw: raw["source"].update(formats=["xlsx"]), "field source.formats.0: Input should be"),
        (lambda raw: raw.update(colour="red"), "field colour: unknown field"),
        (lambda raw: raw["source"].update(fields={"body": {"type": "string"}}), "reads $text, which source.fields"),
        (lambda raw: raw.update(name="Bad Name"), "field name: String should match pattern"),
        (lambda raw: raw["annotation"].update(annotators_per_task=0), "field annotation.annotators_per_task"),
        (lambda raw: raw.update(storage_uri="/no/scheme"), "has no scheme"),
        (lambda raw: raw["annotation"].update(stratify_by="lang"), "stratify_by names 'lang', which is not one of"),
        (lambda raw: raw.update(guidelines="missing.md"), "guidelines: cannot read"),
        (lambda raw: raw["source"].update(uri="${LABELLOOP_NOT_SET}/raw/"), "LABELLOOP_NOT_SET is not set"),
    ],
)
def test_bad_spec_names_file_and_field(make_spec, mutate, expected) -> None:
    path = rewrite(make_spec, mutate)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not readable YAML"):
        load_spec(path)


def test_env_default_and_override(make_spec, monkeypatch) -> None:
    path = rewrite(make_spec, lambda raw: raw["source"].update(uri="${LABELLOOP_RAW:-file:///data/raw}"))
    assert load_spec(path).source.uri == "file:///data/raw/"
    monkeypatch.setenv("LABELLOOP_RAW", "s3://bucket/raw")
    assert load_spec(path).source.uri == "s3://bucket/raw/"


def test_duplicate_names_rejected(make_spec, tmp_path: Path) -> None:
    first = make_spec()
    (first.parent / "copy.yaml").write_text(first.read_text())
    with pytest.raises(SpecError, match="more than one spec is named"):
        load_specs(first.parent)


TEXT = '<Text name="text" value="$text"/>'
CHOICES = '<Choices name="label" toName="text"><Choice value="ham"/><Choice value="spam"/></Choices>'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f'{TEXT}<Labels name="label" toName="text"><Label value="PER"/></Labels>', "<Labels name='label'>"),
        ('<Image name="image" value="$text"/><Polygon name="label" toName="image"/>',
         "<Polygon name='label'> on <Image> is not supported; supported: <Choices> with one choice"),
        ('<Image name="image" value="$text"/><KeyPointLabels name="label" toName="image"><Label value="a"/>'
         '</KeyPointLabels>', "<KeyPointLabels name='label'> on <Image> is not supported"),
        (f'{TEXT}{CHOICES}{CHOICES}', "more than one control is named 'label'; names must be unique"),
        (TEXT + CHOICES.replace('toName="text"', 'toName="body"'), "has toName='body', which names no object tag"),
        (f'{TEXT}<Choices name="label" toName="text"/>', "offers 0 value(s); give it at least two"),
        (f'{TEXT}<Choices name="label" toName="text">', "is not well-formed XML"),
    ],
)
def test_labeling_config_refused_at_parse_time(make_spec, tmp_path: Path, body: str, expected: str) -> None:
    """Anything the loop cannot carry is refused naming the file, the tag and what is supported."""
    config = tmp_path / "config.xml"
    config.write_text(f"<View>{body}</View>")
    path = rewrite(make_spec, lambda raw: raw.update(labeling_config=str(config)))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value) and str(config) in str(error.value)
    assert expected in str(error.value)


def test_every_loop_control_is_audited_the_models_first(make_spec, tmp_path: Path) -> None:
    """Spans beside a document-level choice: both audited (each gated on its own), control_name first."""
    config = tmp_path / "config.xml"
    config.write_text(f'<View>{TEXT}<Labels name="ner" toName="text"><Label value="a"/><Label value="b"/></Labels>'
                      f'{CHOICES}<TextArea name="note" toName="text"/></View>')
    spec = load_spec(rewrite(make_spec, lambda raw: raw.update(labeling_config=str(config))))
    assert [(t.control.name, t.kind) for t in spec.audited_types] == [("label", "choices"), ("ner", "spans")]
    assert spec.task_type is spec.audited_types[0] and spec.comment_controls == ["note"]


def test_models_read_the_objects_data_field_not_its_tag_name(make_spec, tmp_path: Path) -> None:
    """<Text name="body" value="$text">: results say to_name "body"; the model reads data["text"]."""
    from labelloop.model.prelabel import predictions

    config = tmp_path / "config.xml"
    choices = CHOICES.replace('toName="text"', 'toName="body"')
    config.write_text(f'<View><Text name="body" value="$text"/>{choices}</View>')
    spec = load_spec(rewrite(make_spec, lambda raw: raw.update(labeling_config=str(config))))
    assert (spec.object_name, spec.object_field) == ("body", "text")

    class Seen:
        """A stand-in model that records what it was asked (the real learners are tested elsewhere)."""
        classes_ = ["ham", "spam"]

        def predict_proba(self, texts: list[str]) -> Any:
            import numpy as np

            self.texts = list(texts)
            return np.array([[0.2, 0.8] for _ in texts])

    model = Seen()
    (prediction,) = predictions(spec, model, "m:1", [{"text": "WIN a prize"}])
    assert model.texts == ["WIN a prize"]
    assert prediction["result"][0]["to_name"] == "body"
