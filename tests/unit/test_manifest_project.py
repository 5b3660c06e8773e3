"""The manifest's `project` (a cost centre for chargeback): optional, a short name, on every job."""

from __future__ import annotations

import pytest

from batch_runner.errors import ManifestError
from batch_runner.manifest import load_manifest

BASE = """batch: b
endpoint: ray-3.2/reframe
defaults: {prompt: extend, resolution: 540p, aspect_ratio: "9:16"}
sources:
  - url: https://cdn.example.com/a.mp4
  - url: https://cdn.example.com/b.mp4
"""


def test_project_is_put_on_every_job(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(BASE + "project: spring-campaign\n")
    assert [j.project for j in load_manifest(path).jobs] == ["spring-campaign", "spring-campaign"]
    path.write_text(BASE)
    assert [j.project for j in load_manifest(path).jobs] == [None, None]


@pytest.mark.parametrize("value", ['"spring campaign"', '"' + "x" * 300 + '"', "[a, b]"])
def test_a_bad_project_names_its_line_and_quotes_it_short(tmp_path, value):
    path = tmp_path / "m.yaml"
    path.write_text(BASE + f"project: {value}\n")
    with pytest.raises(ManifestError, match="project") as err:
        load_manifest(path)
    assert ":7" in str(err.value) and "x" * 60 not in str(err.value)
