"""``explanations.json`` as the browser reads it: written and read back the same; anything malformed,
or a latent outside the SAE, is an ArtifactError naming the file and the key."""

import json

import pytest

from saekit.browser.explanations import FILE, Explanations, LatentExplanation, Scores, explanations_text, read_explanations
from saekit.errors import ArtifactError

GOOD = Explanations(
    "v1", "m", "http://127.0.0.1:1/v1",
    {3: LatentExplanation("cats", Scores(10, 0, 0.9, 0.9, 1.0, 0.8, 0.888), None)}, {4: "never fired"},
)  # fmt: skip


def test_written_and_read_back(tmp_path):
    (tmp_path / FILE).write_text(explanations_text(GOOD))
    assert read_explanations(tmp_path, 8) == GOOD
    assert read_explanations(tmp_path / "nothing", 8) is None


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(format=9), "format is 9"),
        (lambda d: d["latents"].update({"8": d["latents"]["3"]}), "latents['8']: not a latent id of this SAE (0..7)"),
        (lambda d: d["latents"].update({"-1": {}}), "latents['-1']: not a latent id"),
        (lambda d: d["failed"].update({"x": "why"}), "failed['x']: not a latent id"),
        (lambda d: d["failed"].update({"2": 5}), "failed.2: expected a string"),
        (lambda d: d["latents"]["3"].update(explanation=5), "latents.3.explanation: expected a string"),
        (lambda d: d["latents"]["3"]["detection"].update(n="ten"), "latents.3.detection.n: expected an integer"),
        (lambda d: d["latents"]["3"]["detection"].pop("accuracy"), "latents.3.detection: missing required key accuracy"),
        (lambda d: d["latents"].update({"3": []}), "latents.3: expected an object"),
        (lambda d: d.update(latents=[]), "latents: expected an object"),
        (lambda d: d.pop("model"), "missing required key model"),
    ],
)
def test_a_malformed_file_is_refused_by_name(tmp_path, change, words):
    raw = json.loads(explanations_text(GOOD))
    change(raw)
    (tmp_path / FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="is not a saekit explanations file") as caught:
        read_explanations(tmp_path, 8)
    assert words in str(caught.value) and str(tmp_path / FILE) in str(caught.value)


def test_a_file_that_is_not_json_is_refused_by_name(tmp_path):
    (tmp_path / FILE).write_text('{"format": 1, "latents": NaN}')
    with pytest.raises(ArtifactError, match=FILE):
        read_explanations(tmp_path, 8)
