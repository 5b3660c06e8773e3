"""Manifest parsing and expansion; every error names file:line and the field."""

import os
from pathlib import Path

import pytest

from batch_runner.errors import ManifestError
from batch_runner.manifest import load_manifest
from tests.conftest import write

HEAD = """batch: nightly
endpoint: ray-3.2/reframe
defaults:
  prompt: extend
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        write(tmp_path / "media" / f"{name}.mp4", "x")
    return tmp_path


def load(folder: Path, body: str, name: str = "m.yaml"):
    return load_manifest(write(folder / name, body))


def fails(folder: Path, body: str) -> ManifestError:
    with pytest.raises(ManifestError) as err:
        load(folder, body)
    return err.value


def test_matrix_sweeps_every_source_in_written_order(files: Path):
    m = load(
        files,
        HEAD + 'matrix:\n  aspect_ratio: [9:16, 1:1]\n  resolution: [540p, 720p]\nsources:\n  - glob: "media/*.mp4"\n',
    )
    assert len(m.jobs) == 3 * 2 * 2
    first = m.jobs[0]
    assert (first.params["aspect_ratio"], first.params["resolution"]) == ("9:16", "540p")
    assert first.source == str(files / "media" / "a.mp4")
    assert first.params["video_url"] == first.source
    assert first.output == str(files / "out" / "nightly" / "a_9x16_540p.mp4")  # default template
    assert m.endpoint.id == "luma/agent/ray/v3.2/reframe"


def test_unquoted_aspect_ratios_stay_strings(files: Path):
    m = load(files, HEAD + "matrix:\n  aspect_ratio: [16:9, 1:1]\nsources: [media/a.mp4]\n")
    assert [j.params["aspect_ratio"] for j in m.jobs] == ["16:9", "1:1"]


def test_unknown_key_names_line_and_suggests(files: Path):
    err = fails(files, HEAD + "sources: [media/a.mp4]\nmatirx:\n  aspect_ratio: [1:1]\n")
    assert str(err).startswith(f"{files / 'm.yaml'}:6: matirx: unknown key")
    assert 'did you mean "matrix"?' in str(err)


def test_bad_enum_names_the_line_of_the_value(files: Path):
    err = fails(files, HEAD + 'matrix:\n  aspect_ratio: ["9x16"]\nsources: [media/a.mp4]\n')
    assert err.line == 6 and err.field == "aspect_ratio"
    assert '"9x16" is not one of' in str(err) and 'did you mean "9:16"?' in str(err)


def test_missing_required_field(files: Path):
    err = fails(files, "batch: b\nendpoint: ray-3.2/reframe\nmatrix:\n  aspect_ratio: [1:1]\nsources: [media/a.mp4]\n")
    assert err.field == "prompt" and "field required" in str(err)


def test_wrong_type_in_defaults(files: Path):
    err = fails(files, HEAD + "  resolution: 720\nmatrix:\n  aspect_ratio: [1:1]\nsources: [media/a.mp4]\n")
    assert err.line == 5 and err.field == "resolution" and "got an integer 720" in str(err)


def test_unknown_endpoint_suggests_alias(files: Path):
    err = fails(files, "batch: b\nendpoint: ray-3.2/refram\nsources: [media/a.mp4]\n")
    assert err.line == 2 and "ray-3.2/reframe" in str(err)


def test_duplicate_yaml_key_is_an_error(files: Path):
    err = fails(files, HEAD + "batch: again\nsources: [media/a.mp4]\n")
    assert err.line == 5 and "appears twice" in str(err)


def test_two_jobs_with_the_same_output_path(files: Path):
    err = fails(files, HEAD + 'matrix:\n  aspect_ratio: [9:16, 1:1]\nsources: [media/a.mp4]\noutput: "{stem}.mp4"\n')
    assert err.field == "output" and err.line == 8 and "two jobs write" in str(err)


def test_template_escaping_the_output_root(files: Path):
    err = fails(files, HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\noutput: "../../{stem}.mp4"\n')
    assert err.field == "output" and "escapes the output root" in str(err)


@pytest.mark.parametrize(
    "template",
    [
        "{batch}/{stem}.mp4",  # a folder that does not exist yet
        "linked/{stem}.mp4",  # a folder that is a symlink
        "real/{stem}.mp4",  # an existing folder whose a.mp4 is a symlink (out of the root) and b.mp4 is not
        "real/../{stem}_{aspect_ratio}.mp4",  # a relative step inside the root
        "{stem}/..",  # a relative step as the name
        "../out/{stem}.mp4",  # out of the root and back in
    ],
)
def test_outputs_are_the_resolved_paths_of_the_template(files: Path, template: str):
    """Outputs resolve each folder once; they are still what Path.resolve gives for every job."""
    out = files / "out"
    (out / "real").mkdir(parents=True)
    os.symlink(out / "real", out / "linked")
    os.symlink(files / "outside.mp4", out / "real" / "a.mp4")
    body = HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4, media/b.mp4]\n' + f'output: "{template}"\n'
    if template in ("real/{stem}.mp4", "linked/{stem}.mp4", "{stem}/.."):  # a.mp4 leads out; a/.. is the root
        assert "escapes the output root" in str(fails(files, body))
        return
    m = load(files, body)
    for job, stem in zip(m.jobs, ("a", "b"), strict=True):
        rendered = template.format(batch="nightly", stem=stem, aspect_ratio="1x1")
        assert job.output == str((out / rendered).resolve())


def test_unknown_placeholder(files: Path):
    err = fails(files, HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\noutput: "{stme}.mp4"\n')
    assert "{stem}" in str(err) and err.line == 7


def test_placeholder_without_a_value(files: Path):
    body = (
        "batch: b\nendpoint: ray-2-flash/reframe\ndefaults:\n  aspect_ratio: '1:1'\nsources: [media/a.mp4]\n"
        'output: "{stem}_{prompt}.mp4"\n'
    )
    err = fails(files, body)
    assert "{prompt} has no value" in str(err)


def test_matrix_key_also_in_defaults(files: Path):
    err = fails(files, HEAD + '  aspect_ratio: "1:1"\nmatrix:\n  aspect_ratio: [9:16]\nsources: [media/a.mp4]\n')
    assert err.line == 7 and "both in defaults and in matrix" in str(err)


def test_overrides_apply_to_matching_sources(files: Path):
    m = load(
        files, HEAD + '  aspect_ratio: "1:1"\nsources: ["media/*.mp4"]\noverrides:\n  "b*":\n    prompt: special\n'
    )
    prompts = {Path(j.source).stem: j.params["prompt"] for j in m.jobs}
    assert prompts == {"a": "extend", "b": "special", "c": "extend"}


def test_per_source_params_and_name(files: Path):
    m = load(
        files,
        HEAD + '  aspect_ratio: "1:1"\nsources:\n  - path: media/a.mp4\n    name: hero\n'
        "    params: {resolution: 1080p}\n    tags: [vip]\n",
    )
    [job] = m.jobs
    assert job.params["resolution"] == "1080p" and job.output.endswith("hero.mp4") and "vip" in job.tags


def test_relative_paths_resolve_against_the_manifest_folder(files: Path, tmp_path: Path):
    sub = tmp_path / "jobs"
    m = load_manifest(
        write(sub / "m.yaml", HEAD + '  aspect_ratio: "1:1"\nsources: [../media/a.mp4]\noutput_root: ../out\n')
    )
    assert m.jobs[0].source == str(files / "media" / "a.mp4")
    assert m.output_root == files / "out"


def test_urls_are_sources(files: Path):
    m = load(files, HEAD + '  aspect_ratio: "1:1"\nsources:\n  - https://cdn.example.com/v/clip%201.mp4?sig=1\n')
    assert m.jobs[0].source == "https://cdn.example.com/v/clip%201.mp4?sig=1"
    assert m.jobs[0].output.endswith("clip-201.mp4")


def test_glob_without_matches_warns(files: Path):
    m = load(files, HEAD + '  aspect_ratio: "1:1"\nsources: ["media/*.mov"]\n')
    assert m.jobs == [] and "matches no files" in m.warnings[0]


def test_csv_rows_carry_their_own_prompt_and_typed_params(files: Path):
    write(
        files / "rows.csv",
        "source,prompt,x_start,x_end,tags\nmedia/a.mp4,first,0,10,hero;wide\nmedia/b.mp4,second,,,\n",
    )
    m = load(
        files,
        "batch: b\nendpoint: ray-2-flash/reframe\ndefaults:\n  aspect_ratio: '9:16'\nsources:\n  - rows: rows.csv\n",
    )
    assert [(j.params["prompt"], j.params.get("x_end")) for j in m.jobs] == [("first", 10), ("second", None)]
    assert m.jobs[0].tags == ("hero", "wide") and m.jobs[0].origin == f"{files / 'rows.csv'}:2"


def test_csv_row_errors_name_the_csv_line(files: Path):
    write(files / "rows.csv", "source,prompt,x_start\nmedia/a.mp4,ok,1\nmedia/b.mp4,bad,ten\n")
    err = fails(
        files,
        "batch: b\nendpoint: ray-2-flash/reframe\ndefaults:\n  aspect_ratio: '9:16'\nsources:\n  - rows: rows.csv\n",
    )
    assert err.file == str(files / "rows.csv") and err.line == 3 and err.field == "x_start"


def test_csv_enum_error_points_at_the_row(files: Path):
    write(files / "rows.csv", "source,aspect_ratio\nmedia/a.mp4,9:16\nmedia/b.mp4,2:1\n")
    err = fails(files, "batch: b\nendpoint: ray-2-flash/reframe\nsources:\n  - rows: rows.csv\n")
    assert (err.file, err.line, err.field) == (str(files / "rows.csv"), 3, "aspect_ratio")


def test_jsonl_rows_for_text_to_video(files: Path):
    write(files / "p.jsonl", '{"name": "one", "prompt": "a"}\n\n{"name": "two", "prompt": "b", "loop": true}\n')
    m = load(files, "batch: t\nendpoint: ray-3.2/text-to-video\nsources:\n  - rows: p.jsonl\n")
    assert [(j.params["prompt"], j.params.get("loop")) for j in m.jobs] == [("a", None), ("b", True)]
    assert [Path(j.output).name for j in m.jobs] == ["one.mp4", "two.mp4"]
    assert m.jobs[0].source is None


def test_jsonl_syntax_error_names_the_line(files: Path):
    write(files / "p.jsonl", '{"prompt": "a"}\n{"prompt": \n')
    err = fails(files, "batch: t\nendpoint: ray-3.2/text-to-video\nsources:\n  - rows: p.jsonl\n")
    assert err.line == 2 and "not valid JSON" in str(err)


def test_video_endpoint_needs_a_source(files: Path):
    err = fails(files, HEAD + "sources:\n  - params: {aspect_ratio: '1:1'}\n")
    assert err.line == 6 and "needs one of glob, path, url or rows" in str(err)


def test_budget_is_parsed_exactly(files: Path):
    m = load(files, HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\nbudget:\n  max_usd: "25.10"\n')
    assert m.budget_micro_usd == 25_100_000
    err = fails(files, HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\nbudget:\n  max_usd: lots\n')
    assert err.field == "budget.max_usd" and err.line == 8


def test_invalid_yaml_names_the_line(files: Path):
    err = fails(files, HEAD + "sources: [media/a.mp4\n")
    assert err.line is not None and "not valid YAML" in str(err)


def test_media_params_resolve_to_absolute_paths(files: Path):
    write(files / "first.png", "x")
    m = load(
        files,
        "batch: b\nendpoint: ray-2-flash/reframe\ndefaults:\n  aspect_ratio: '1:1'\n  image_url: first.png\n"
        "sources: [media/a.mp4]\n",
    )
    assert m.jobs[0].params["image_url"] == str(files / "first.png")
    assert m.jobs[0].extra_media == {"image_url": str(files / "first.png")}


def test_batch_name_is_checked(files: Path):
    err = fails(files, "batch: 'night ly/x'\nendpoint: ray-3.2/reframe\nsources: [media/a.mp4]\n")
    assert err.field == "batch" and err.line == 1


def test_budget_policies_are_parsed(files: Path):
    m = load(
        files,
        HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\nbudget:\n  max_usd: "25"\n'
        '  max_usd_per_day: "40.50"\n  warn_at_usd: "20"\n',
    )
    assert (m.budget_micro_usd, m.daily_budget_micro_usd, m.warn_at_micro_usd) == (25_000_000, 40_500_000, 20_000_000)
    err = fails(files, HEAD + '  aspect_ratio: "1:1"\nsources: [media/a.mp4]\nbudget:\n  max_usd_per_week: "1"\n')
    assert err.line == 8 and "max_usd_per_day" in str(err)


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_every_error_class_carries_a_hint() -> None:
    from batch_runner import errors

    classes = _subclasses(errors.BatchRunnerError)
    assert len(classes) > 20
    for cls in classes:
        err = cls(errors=[]) if cls is errors.ManifestErrorsError else cls("something failed")
        assert err.user_hint.strip(), cls.__name__
        assert all(line.endswith(f"({err.user_hint})") for line in err.lines()), cls.__name__


def test_shorten_bounds_any_quoted_value() -> None:
    from batch_runner.errors import shorten

    assert shorten("9x16") == "'9x16'"
    long = shorten("x" * 1_000_000)
    assert len(long) < 80 and "1000002 characters" in long
    assert shorten(list(range(10_000))) == "a list of 10000 items"
