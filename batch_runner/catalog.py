"""The endpoint catalog: every supported Luma Ray endpoint on fal, as data.

Each endpoint's fields, defaults, cross-field rules, media inputs and billing rule live here once
(the field types and checks themselves in schema.py); the manifest, the pricing, the API client
and the emulator all read them from here.
Sources: shared/seeds (fal product pages) and shared/reference/fal-queue-protocol.md §11, §14.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

from .schema import (
    Field,
    Issue,
    Rule,
    check_fields,
    crop_box,
    edit_strength_xor_auto,
    hdr_not_10s,
    hdr_rules,
    loop_rules,
    max_source,
    source_position,
    suggest,
)

RESOLUTIONS = ("540p", "720p", "1080p")
#: The resolution convention: the short side of the output picture, in pixels.
RESOLUTION_SHORT_SIDE_PX = {"540p": 540, "720p": 720, "1080p": 1080}
ASPECT_RAY2_REFRAME = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
ASPECT_RAY2_GENERATE = ("16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
ASPECT_RAY32 = ("3:4", "4:3", "1:1", "9:16", "16:9", "21:9")
EDIT_MODES = tuple(f"{k}_{n}" for k in ("adhere", "flex", "reimagine") for n in (1, 2, 3))
#: Endpoints without a resolution input (Ray 2 reframe and modify) render at this resolution.
DEFAULT_OUTPUT_RESOLUTION = "720p"
RAY32_PROMPT_MAX_CHARS = 6000
RAY32_REFRAME_MAX_SOURCE_S = Decimal(30)

# Billing rules: how the billable quantity of a job is counted.
PER_STARTED_SOURCE_SECOND = "per_started_source_second"  # ceil(probed source duration)
PER_SECOND = "per_second"  # seconds of source video, rounded up to whole seconds
PER_VIDEO = "per_video"  # one output video; price set by resolution, duration, modifiers


@dataclass(frozen=True)
class Endpoint:
    """A fal endpoint with its schema, rules and billing rule."""

    id: str
    alias: str
    model: str  # ray-2 | ray-2-flash | ray-3.2
    family: str  # reframe | text-to-video | image-to-video | video-to-video | modify
    fields: tuple[Field, ...]
    billing: str
    rules: tuple[Rule, ...] = ()
    source_field: str | None = None  # the field a manifest source goes into
    output_aspect: str = "param"  # "param" (aspect_ratio input) or "source"
    output_duration: str = "source"  # "source" or "param" (duration input)
    max_source_s: Decimal | None = None
    notes: str = ""
    field_map: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_map", {f.name: f for f in self.fields})

    @cached_property
    def media_fields(self) -> dict[str, str]:
        """Every field that takes a media URL, with its kind (video or image). Shared: do not change it."""
        return {f.name: f.media for f in self.fields if f.media}

    @cached_property
    def _defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in self.fields if f.default is not None}

    @cached_property
    def _missing(self) -> tuple[Issue, ...]:
        """The issue of every required field, as check_fields words it for an input without it."""
        return tuple(check_fields(self.fields, {}, (), False))

    @property
    def source_kind(self) -> str | None:
        return self.field_map[self.source_field].media if self.source_field else None

    @property
    def has_resolution(self) -> bool:
        return "resolution" in self.field_map

    @property
    def durations(self) -> tuple[str, ...]:
        f = self.field_map.get("duration")
        return f.enum if f else ()

    def with_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """The input with every schema default filled in (the canonical form)."""
        out = dict(self._defaults)
        out.update({k: v for k, v in params.items() if v is not None})
        return out

    def validate(
        self,
        params: dict[str, Any],
        *,
        source_duration: Decimal | None = None,
        allow_extra: bool = False,
        memo: CheckMemo | None = None,
    ) -> list[Issue]:
        """Every problem with an input: types, enums, required fields, cross-field rules. `memo`
        (a dict kept for one batch, which repeats values) remembers each field value's issues."""
        if memo is None:
            issues = list(check_fields(self.fields, params, (), allow_extra))
        else:
            issues = self._checked_fields(params, allow_extra, memo)
        if not issues:
            merged = self.with_defaults(params)
            for rule in self.rules:
                issues.extend(rule(merged, source_duration))
        return issues

    def _checked_fields(self, params: dict[str, Any], allow_extra: bool, memo: CheckMemo) -> list[Issue]:
        """check_fields(self.fields, params, (), allow_extra), field by field: the issues of a value of
        an exact type whose equal values always read alike come from the memo after the first time."""
        issues: list[Issue] = []
        for name, value in params.items():
            key = (self.id, allow_extra, name, type(value), value) if type(value) in _MEMO_TYPES else None
            found = memo.get(key) if key is not None else None
            if found is None:
                # a one-field input also has every other required field missing: those come below
                found = tuple(
                    i for i in check_fields(self.fields, {name: value}, (), allow_extra) if i not in self._missing
                )
                if key is not None:
                    memo[key] = found
            issues.extend(found)
        issues.extend(i for i in self._missing if params.get(i.loc[0]) is None)
        return issues


#: Issues of one field value, by (endpoint id, allow_extra, field, type, value): see Endpoint.validate.
CheckMemo = dict[tuple[str, bool, str, type, Any], tuple[Issue, ...]]
_MEMO_TYPES = (str, int, bool, type(None))  # not floats: 0.0 == -0.0, and a message shows which it was


# --------------------------------------------------------------------------- the endpoints

_RAY2 = "fal-ai/luma-dream-machine"
_RAY32 = "luma/agent/ray/v3.2"


def _f(name: str, type_: str = "string", **kw: Any) -> Field:
    return Field(name, type_, **kw)


def _prompt(required: bool, max_length: int | None = None) -> Field:
    return _f("prompt", required=required, max_length=max_length)


def _resolution() -> Field:
    return _f("resolution", "enum", enum=RESOLUTIONS, default="540p")


def _ray2_reframe(model: str) -> Endpoint:
    return Endpoint(
        id=f"{_RAY2}/{model}/reframe",
        alias=f"{model}/reframe",
        model=model,
        family="reframe",
        fields=(
            _f("video_url", required=True, media="video"),
            _f("aspect_ratio", "enum", required=True, enum=ASPECT_RAY2_REFRAME),
            _f("image_url", media="image"),
            _prompt(False),
            _f("grid_position_x", "integer"),
            _f("grid_position_y", "integer"),
            _f("x_start", "integer"),
            _f("x_end", "integer"),
            _f("y_start", "integer"),
            _f("y_end", "integer"),
        ),
        billing=PER_SECOND,
        rules=(crop_box,),
        source_field="video_url",
        notes="no resolution input; one integrator reports sources up to 30 s / 100 MB (unverified)",
    )


def _ray2_text(model: str) -> Endpoint:
    return Endpoint(
        id=f"{_RAY2}/{model}",
        alias=f"{model}/text-to-video",
        model=model,
        family="text-to-video",
        fields=(
            _prompt(True),
            _f("aspect_ratio", "enum", enum=ASPECT_RAY2_GENERATE, default="16:9"),
            _f("loop", "boolean", default=False),
            _resolution(),
            _f("duration", "enum", enum=("5s", "9s"), default="5s"),
        ),
        billing=PER_VIDEO,
        output_duration="param",
    )


def _ray2_image(model: str, durations: tuple[str, ...]) -> Endpoint:
    return Endpoint(
        id=f"{_RAY2}/{model}/image-to-video",
        alias=f"{model}/image-to-video",
        model=model,
        family="image-to-video",
        fields=(
            _prompt(True),
            _f("image_url", media="image"),
            _f("end_image_url", media="image"),
            _f("aspect_ratio", "enum", enum=ASPECT_RAY2_GENERATE, default="16:9"),
            _f("loop", "boolean", default=False),
            _resolution(),
            _f("duration", "enum", enum=durations, default="5s"),
        ),
        billing=PER_VIDEO,
        source_field="image_url",
        output_duration="param",
        notes="duration enum conflicts between sources: the product page lists 5s only for ray-2, "
        "flash llms.txt lists 5s and 9s",
    )


def _ray2_modify(model: str) -> Endpoint:
    return Endpoint(
        id=f"{_RAY2}/{model}/modify",
        alias=f"{model}/modify",
        model=model,
        family="modify",
        fields=(
            _f("video_url", required=True, media="video"),
            _f("image_url", required=True, media="image"),
            _prompt(False),
            _f("mode", "enum", enum=EDIT_MODES, default="flex_1"),
        ),
        billing=PER_SECOND,
        source_field="video_url",
        output_aspect="source",
    )


_RAY32_GEN_COMMON = (
    _f("aspect_ratio", "enum", enum=ASPECT_RAY32, default="16:9"),
    _resolution(),
)
_HDR_FIELDS = (_f("hdr", "boolean"), _f("exr_export", "boolean"))
_REFERENCE_IMAGES = _f("reference_image_urls", "list", items="string", media="image")

ENDPOINTS: tuple[Endpoint, ...] = (
    _ray2_reframe("ray-2-flash"),
    _ray2_reframe("ray-2"),
    _ray2_text("ray-2"),
    _ray2_text("ray-2-flash"),
    _ray2_image("ray-2", ("5s",)),
    _ray2_image("ray-2-flash", ("5s", "9s")),
    _ray2_modify("ray-2"),
    _ray2_modify("ray-2-flash"),
    Endpoint(
        id=f"{_RAY32}/text-to-video",
        alias="ray-3.2/text-to-video",
        model="ray-3.2",
        family="text-to-video",
        fields=(
            _prompt(True, RAY32_PROMPT_MAX_CHARS),
            *_RAY32_GEN_COMMON,
            _f("duration", "enum", enum=("5s", "10s"), default="5s"),
            _f("loop", "boolean"),
            *_HDR_FIELDS,
            _REFERENCE_IMAGES,
        ),
        billing=PER_VIDEO,
        rules=(hdr_rules, hdr_not_10s, loop_rules),
        output_duration="param",
    ),
    Endpoint(
        id=f"{_RAY32}/image-to-video",
        alias="ray-3.2/image-to-video",
        model="ray-3.2",
        family="image-to-video",
        fields=(
            _prompt(True, RAY32_PROMPT_MAX_CHARS),
            _f("image_url", required=True, media="image"),
            _f("end_image_url", media="image"),
            *_RAY32_GEN_COMMON,
            _f("duration", "enum", enum=("5s",), default="5s"),
            _f("loop", "boolean"),
            *_HDR_FIELDS,
            _REFERENCE_IMAGES,
        ),
        billing=PER_VIDEO,
        rules=(hdr_rules, loop_rules),
        source_field="image_url",
        output_duration="param",
        notes="10s needs keyframes, which batch_runner does not support yet",
    ),
    Endpoint(
        id=f"{_RAY32}/video-to-video",
        alias="ray-3.2/video-to-video",
        model="ray-3.2",
        family="video-to-video",
        fields=(
            _prompt(True, RAY32_PROMPT_MAX_CHARS),
            _f("video_url", required=True, media="video"),
            _f("start_image_url", media="image"),
            _resolution(),
            _f("duration", "enum", enum=("5s", "10s"), default="5s"),
            _f("edit_strength", "enum", enum=EDIT_MODES),
            _f("auto_controls", "boolean"),
            *_HDR_FIELDS,
        ),
        billing=PER_VIDEO,
        rules=(hdr_rules, edit_strength_xor_auto),
        source_field="video_url",
        output_aspect="source",
        output_duration="param",
    ),
    Endpoint(
        id=f"{_RAY32}/reframe",
        alias="ray-3.2/reframe",
        model="ray-3.2",
        family="reframe",
        fields=(
            _prompt(True, RAY32_PROMPT_MAX_CHARS),
            _f("video_url", required=True, media="video"),
            _f("aspect_ratio", "enum", required=True, enum=ASPECT_RAY32),
            _resolution(),
            _f(
                "source_position",
                "object",
                fields=tuple(_f(n, "number", required=True) for n in ("x_norm", "y_norm", "w_norm", "h_norm")),
            ),
        ),
        billing=PER_STARTED_SOURCE_SECOND,
        rules=(source_position, max_source(RAY32_REFRAME_MAX_SOURCE_S)),
        source_field="video_url",
        max_source_s=RAY32_REFRAME_MAX_SOURCE_S,
    ),
)

_BY_ID = {e.id: e for e in ENDPOINTS}
_BY_ALIAS = {e.alias: e for e in ENDPOINTS}


def endpoint(name: str) -> Endpoint:
    """Look an endpoint up by its full fal id or its short alias."""
    found = _BY_ID.get(name) or _BY_ALIAS.get(name)
    if found is None:
        raise KeyError(name)
    return found


def suggest_endpoint(name: str) -> str:
    """A hint for an unknown endpoint name."""
    guess = suggest(name, [*_BY_ALIAS, *_BY_ID])
    return guess or "run `batch-runner endpoints` to list them"


# --------------------------------------------------------------------------- output convention


@dataclass(frozen=True)
class OutputSpec:
    """What a job's output video must measure: the runner verifies downloads against it."""

    width: int
    height: int
    duration: Decimal


def _even(value: Decimal) -> int:
    n = int(value.to_integral_value())
    return n + (n % 2)


def output_size(aspect: tuple[int, int], resolution: str) -> tuple[int, int]:
    """Width and height for an aspect ratio at a resolution: the short side is 540/720/1080 px
    and the long side follows the aspect ratio, rounded to an even number (H.264 needs it)."""
    short = RESOLUTION_SHORT_SIDE_PX[resolution]
    w, h = aspect
    if w >= h:
        return _even(Decimal(short) * w / h), short
    return short, _even(Decimal(short) * h / w)


def parse_aspect(value: str) -> tuple[int, int]:
    w, _, h = value.partition(":")
    return int(w), int(h)


def expected_output(
    ep: Endpoint, params: dict[str, Any], source_size: tuple[int, int] | None, source_duration: Decimal | None
) -> OutputSpec:
    """The size and length of the video an endpoint returns for an input (see README)."""
    full = ep.with_defaults(params)
    resolution = full.get("resolution", DEFAULT_OUTPUT_RESOLUTION)
    if ep.output_aspect == "param":
        aspect = parse_aspect(full["aspect_ratio"])
    else:
        if source_size is None:
            raise ValueError(f"{ep.id} keeps the source's aspect ratio and needs its size")
        aspect = source_size
    if ep.output_duration == "param":
        duration = Decimal(str(full["duration"]).rstrip("s"))
    else:
        if source_duration is None:
            raise ValueError(f"{ep.id} keeps the source's duration and needs it")
        duration = source_duration
    width, height = output_size(aspect, resolution)
    return OutputSpec(width, height, duration)
