"""The endpoint catalog: every seeded endpoint, its schema and its cross-field rules."""

from decimal import Decimal

import pytest

from batch_runner import catalog

SEEDED = [
    "fal-ai/luma-dream-machine/ray-2-flash/reframe",
    "fal-ai/luma-dream-machine/ray-2/reframe",
    "fal-ai/luma-dream-machine/ray-2/image-to-video",
    "fal-ai/luma-dream-machine/ray-2-flash/image-to-video",
    "fal-ai/luma-dream-machine/ray-2",
    "fal-ai/luma-dream-machine/ray-2-flash",
    "fal-ai/luma-dream-machine/ray-2/modify",
    "fal-ai/luma-dream-machine/ray-2-flash/modify",
    "luma/agent/ray/v3.2/text-to-video",
    "luma/agent/ray/v3.2/image-to-video",
    "luma/agent/ray/v3.2/video-to-video",
    "luma/agent/ray/v3.2/reframe",
]


def test_catalog_has_every_seeded_endpoint_once():
    assert sorted(e.id for e in catalog.ENDPOINTS) == sorted(SEEDED)
    assert len({e.alias for e in catalog.ENDPOINTS}) == len(SEEDED)


def test_endpoint_resolves_by_id_and_alias():
    assert catalog.endpoint("ray-3.2/reframe") is catalog.endpoint("luma/agent/ray/v3.2/reframe")
    with pytest.raises(KeyError):
        catalog.endpoint("ray-9/reframe")
    assert "ray-3.2/reframe" in catalog.suggest_endpoint("ray-3.2/refram")


def test_media_fields_are_declared():
    assert catalog.endpoint("ray-3.2/video-to-video").media_fields == {"video_url": "video", "start_image_url": "image"}
    i2v = catalog.endpoint("ray-2/image-to-video")
    assert i2v.media_fields == {"image_url": "image", "end_image_url": "image"}
    assert i2v.source_field == "image_url" and i2v.source_kind == "image"
    assert catalog.endpoint("ray-2/text-to-video").source_field is None


def _issues(alias, params, **kw):
    return catalog.endpoint(alias).validate(params, **kw)


REFRAME = {"prompt": "p", "video_url": "v.mp4", "aspect_ratio": "9:16"}


def test_valid_reframe_input_has_no_issues():
    assert _issues("ray-3.2/reframe", REFRAME) == []


def test_bad_enum_names_the_choices_and_suggests_the_closest():
    [issue] = _issues("ray-3.2/reframe", {**REFRAME, "aspect_ratio": "9x16"})
    assert issue.loc == ("aspect_ratio",) and issue.type == "enum"
    assert "1:1" in issue.msg and issue.hint == 'did you mean "9:16"?'


def test_missing_required_field_is_reported():
    issues = _issues("ray-3.2/reframe", {"video_url": "v.mp4", "aspect_ratio": "1:1"})
    assert [(i.loc, i.type) for i in issues] == [(("prompt",), "missing")]


def test_wrong_type_and_unknown_field_are_reported():
    issues = _issues("ray-2-flash/reframe", {"video_url": "v", "aspect_ratio": "1:1", "x_start": "10", "colour": 1})
    assert {(i.field, i.type) for i in issues} == {("x_start", "integer_type"), ("colour", "extra_forbidden")}
    assert (
        catalog.endpoint("ray-2-flash/reframe").validate(
            {"video_url": "v", "aspect_ratio": "1:1", "colour": 1}, allow_extra=True
        )
        == []
    )


def test_booleans_are_not_integers():
    [issue] = _issues("ray-2-flash/reframe", {"video_url": "v", "aspect_ratio": "1:1", "x_start": True})
    assert issue.type == "integer_type"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"hdr": True}, "hdr"),  # hdr needs 720p/1080p (default is 540p)
        ({"hdr": True, "resolution": "1080p", "duration": "10s"}, "hdr"),
        ({"exr_export": True, "resolution": "720p"}, "exr_export"),
        ({"loop": True, "duration": "10s"}, "loop"),
        ({"loop": True, "hdr": True, "resolution": "720p"}, "loop"),
    ],
)
def test_ray32_text_to_video_rules(params, field):
    issues = _issues("ray-3.2/text-to-video", {"prompt": "p", **params})
    assert field in {i.field for i in issues}


def test_ray32_hdr_at_720p_is_valid():
    assert (
        _issues("ray-3.2/text-to-video", {"prompt": "p", "hdr": True, "exr_export": True, "resolution": "720p"}) == []
    )


def test_loop_excludes_an_end_frame():
    issues = _issues(
        "ray-3.2/image-to-video", {"prompt": "p", "image_url": "a.png", "end_image_url": "b.png", "loop": True}
    )
    assert [i.field for i in issues] == ["loop"]


def test_edit_strength_excludes_auto_controls():
    issues = _issues(
        "ray-3.2/video-to-video", {"prompt": "p", "video_url": "v", "edit_strength": "flex_1", "auto_controls": True}
    )
    assert [i.field for i in issues] == ["edit_strength"]
    assert _issues("ray-3.2/video-to-video", {"prompt": "p", "video_url": "v", "auto_controls": True}) == []


def test_prompt_length_limit_for_ray32():
    issues = _issues("ray-3.2/text-to-video", {"prompt": "x" * 6001})
    assert [i.type for i in issues] == ["string_too_long"]


@pytest.mark.parametrize(
    ("pos", "bad"),
    [
        ({"x_norm": 0.1, "y_norm": 0, "w_norm": 0.95, "h_norm": 1}, "source_position.w_norm"),
        ({"x_norm": 0, "y_norm": 0.5, "w_norm": 1, "h_norm": 0.6}, "source_position.h_norm"),
        ({"x_norm": -0.1, "y_norm": 0, "w_norm": 0.5, "h_norm": 1}, "source_position.x_norm"),
        ({"x_norm": 0, "y_norm": 0, "w_norm": 0, "h_norm": 1}, "source_position.w_norm"),
    ],
)
def test_source_position_must_stay_inside_the_canvas(pos, bad):
    issues = _issues("ray-3.2/reframe", {**REFRAME, "source_position": pos})
    assert bad in {i.field for i in issues}


def test_source_position_needs_all_four_fractions():
    issues = _issues("ray-3.2/reframe", {**REFRAME, "source_position": {"x_norm": 0.1}})
    assert {i.field for i in issues} == {f"source_position.{n}" for n in ("y_norm", "w_norm", "h_norm")}


@pytest.mark.parametrize(("duration", "ok"), [("30.0", True), ("30.000000", True), ("30.04", False), ("0.5", True)])
def test_ray32_reframe_source_at_most_30_seconds(duration, ok):
    issues = _issues("ray-3.2/reframe", REFRAME, source_duration=Decimal(duration))
    assert (issues == []) is ok


def test_crop_box_must_be_ordered():
    issues = _issues("ray-2/reframe", {"video_url": "v", "aspect_ratio": "1:1", "x_start": 100, "x_end": 50})
    assert [i.field for i in issues] == ["x_end"]


def test_defaults_fill_the_canonical_input():
    full = catalog.endpoint("ray-2/text-to-video").with_defaults({"prompt": "p"})
    assert full == {"prompt": "p", "aspect_ratio": "16:9", "loop": False, "resolution": "540p", "duration": "5s"}


def test_issue_renders_as_a_fal_422_detail_item():
    [issue] = _issues("ray-3.2/reframe", {**REFRAME, "aspect_ratio": "2:1"})
    assert issue.as_detail() == {"loc": ["body", "aspect_ratio"], "msg": issue.msg, "type": "enum"}


_INPUTS = [
    {"prompt": "p", "video_url": "a.mp4", "aspect_ratio": "9:16"},
    {"prompt": "p", "video_url": "a.mp4", "aspect_ratio": "9x16"},
    {"prompt": 3, "video_url": None, "aspect_ratio": "1:1", "resolution": "2k"},
    {"prompt": "p", "video_url": "a.mp4", "aspect_ratio": "1:1", "hdr": True, "loop": 1, "extra": "x"},
    {"prompt": "p", "video_url": "a.mp4", "aspect_ratio": "1:1", "grid_position_x": True, "x_start": 5, "x_end": 2},
    {"prompt": "p", "video_url": "a.mp4", "aspect_ratio": "1:1", "grid_position_x": 1, "x_start": 1.0},
    {"prompt": "\x00", "aspect_ratio": "3:4", "source_position": {"x_norm": 0.9, "y_norm": 0, "w_norm": 0.5}},
    {"prompt": "p", "image_url": "i.png", "duration": "10s", "loop": True, "end_image_url": "e.png"},
    {"prompt": " ", "reference_image_urls": ["a", 3], "duration": "9s", "mode": "flex_9"},
    {},
]


@pytest.mark.parametrize("allow_extra", [False, True])
def test_validate_with_a_memo_reports_exactly_what_validate_reports(allow_extra):
    """A plan keeps one memo for all its jobs: whatever order they come in, each job gets the issues
    a memo-less check gives it (booleans are not taken for the integers they equal)."""
    memo: catalog.CheckMemo = {}
    for _ in range(2):  # the second round answers from the memo
        for ep in catalog.ENDPOINTS:
            for params in _INPUTS:
                for duration in (None, Decimal("31")):
                    plain = ep.validate(params, source_duration=duration, allow_extra=allow_extra)
                    memoised = ep.validate(params, source_duration=duration, allow_extra=allow_extra, memo=memo)
                    assert memoised == plain, (ep.alias, params)
    assert memo
