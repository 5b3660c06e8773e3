"""The endpoint catalog: every supported Luma Ray endpoint on fal, as data.

Schemas, defaults, cross-field rules, media inputs and billing rules live here once;
the manifest, the pricing, the API client and the emulator all read them from here.
Sources: shared/seeds (fal product pages) and shared/reference/fal-queue-protocol.md §11, §14.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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
class Issue:
    """One validation problem, shaped like an item of fal's 422 `detail` list."""

    loc: tuple[str, ...]
    msg: str
    type: str
    hint: str | None = None

    @property
    def field(self) -> str:
        return ".".join(self.loc)

    def as_detail(self) -> dict[str, Any]:
        return {"loc": ["body", *self.loc], "msg": self.msg, "type": self.type}


@dataclass(frozen=True)
class Field:
    """One input field of an endpoint's schema."""

    name: str
    type: str  # string | integer | number | boolean | enum | object | list
    required: bool = False
    enum: tuple[str, ...] = ()
    default: Any = None
    media: str | None = None  # "video" or "image" when the field takes a media URL
    fields: tuple[Field, ...] = ()  # subfields of an object
    items: str | None = None  # item type of a list
    max_length: int | None = None
    doc: str = ""


Rule = Callable[[dict[str, Any], "Decimal | None"], Iterable[Issue]]


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

    @property
    def media_fields(self) -> dict[str, str]:
        """Every field that takes a media URL, with its kind (video or image)."""
        return {f.name: f.media for f in self.fields if f.media}

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
        out = {f.name: f.default for f in self.fields if f.default is not None}
        out.update({k: v for k, v in params.items() if v is not None})
        return out

    def validate(
        self,
        params: dict[str, Any],
        *,
        source_duration: Decimal | None = None,
        allow_extra: bool = False,
    ) -> list[Issue]:
        """Every problem with an input: types, enums, required fields, cross-field rules."""
        issues = list(_check_fields(self.fields, params, (), allow_extra))
        if not issues:
            merged = self.with_defaults(params)
            for rule in self.rules:
                issues.extend(rule(merged, source_duration))
        return issues


# --------------------------------------------------------------------------- validation


def _suggest(value: Any, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f'did you mean "{match[0]}"?' if match else None


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string" or kind == "enum":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise ValueError(f"unknown field type {kind}")


def _check_fields(
    fields: tuple[Field, ...], params: dict[str, Any], loc: tuple[str, ...], allow_extra: bool
) -> Iterable[Issue]:
    by_name = {f.name: f for f in fields}
    for name, value in params.items():
        f = by_name.get(name)
        if f is None:
            if not allow_extra:
                yield Issue(
                    (*loc, name),
                    "is not an input of this endpoint",
                    "extra_forbidden",
                    _suggest(name, by_name) or f"known fields: {', '.join(by_name)}",
                )
            continue
        if value is None:
            continue
        yield from _check_value(f, value, (*loc, name), allow_extra)
    for f in fields:
        if f.required and params.get(f.name) is None:
            yield Issue((*loc, f.name), "field required", "missing")


def _check_value(f: Field, value: Any, loc: tuple[str, ...], allow_extra: bool) -> Iterable[Issue]:
    if not _type_ok(f.type, value):
        want = "one of " + ", ".join(f.enum) if f.type == "enum" else f"a {f.type}"
        yield Issue(
            loc,
            f"must be {want}, got {type(value).__name__} {value!r}",
            f"{f.type}_type",
            "quote the value in YAML" if f.type in ("enum", "string") else None,
        )
        return
    if f.type == "enum" and value not in f.enum:
        yield Issue(loc, f'"{value}" is not one of {", ".join(f.enum)}', "enum", _suggest(value, f.enum))
    elif f.type == "string" and f.max_length and len(value) > f.max_length:
        yield Issue(loc, f"is {len(value)} characters, at most {f.max_length} allowed", "string_too_long")
    elif f.type == "object":
        yield from _check_fields(f.fields, value, loc, allow_extra)
    elif f.type == "list":
        for i, item in enumerate(value):
            if not _type_ok(f.items or "string", item):
                yield Issue((*loc, str(i)), f"must be a {f.items}, got {item!r}", f"{f.items}_type")


# --------------------------------------------------------------------------- cross-field rules


def _hdr_rules(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("hdr") and p.get("resolution", "540p") not in ("720p", "1080p"):
        yield Issue(("hdr",), "needs resolution 720p or 1080p", "value_error", "set resolution: 720p or drop hdr")
    if p.get("exr_export") and not p.get("hdr"):
        yield Issue(("exr_export",), "needs hdr: true", "value_error", "set hdr: true or drop exr_export")


def _loop_rules(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if not p.get("loop"):
        return
    if p.get("duration", "5s") != "5s":
        yield Issue(("loop",), "is only valid for 5s videos", "value_error", "set duration: 5s")
    if p.get("hdr"):
        yield Issue(("loop",), "is only valid for standard dynamic range (hdr: false)", "value_error")
    if p.get("end_image_url"):
        yield Issue(("loop",), "cannot be combined with end_image_url", "value_error")


def _hdr_not_10s(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("hdr") and p.get("duration") == "10s":
        yield Issue(("hdr",), "is not supported with 10s videos", "value_error", "set duration: 5s")


def _edit_strength_xor_auto(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("edit_strength") and p.get("auto_controls"):
        yield Issue(
            ("edit_strength",),
            "cannot be combined with auto_controls",
            "value_error",
            "drop one of edit_strength and auto_controls",
        )


def _crop_box(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    for lo, hi in (("x_start", "x_end"), ("y_start", "y_end")):
        for name in (lo, hi):
            if p.get(name) is not None and p[name] < 0:
                yield Issue((name,), "must be 0 or more", "greater_than_equal")
        if p.get(lo) is not None and p.get(hi) is not None and p[lo] >= p[hi]:
            yield Issue((hi,), f"must be greater than {lo}", "value_error")


def _source_position(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    sp = p.get("source_position")
    if not sp:
        return
    for name in ("x_norm", "y_norm", "w_norm", "h_norm"):
        if not 0 <= sp[name] <= 1:
            yield Issue(("source_position", name), "must be a fraction between 0 and 1", "value_error")
    for name in ("w_norm", "h_norm"):
        if sp[name] <= 0:
            yield Issue(("source_position", name), "must be greater than 0", "value_error")
    if sp["x_norm"] + sp["w_norm"] > 1:
        yield Issue(("source_position", "w_norm"), "x_norm + w_norm must stay within the canvas (≤ 1)", "value_error")
    if sp["y_norm"] + sp["h_norm"] > 1:
        yield Issue(("source_position", "h_norm"), "y_norm + h_norm must stay within the canvas (≤ 1)", "value_error")


def _max_source(limit: Decimal) -> Rule:
    def rule(p: dict[str, Any], duration: Decimal | None) -> Iterable[Issue]:
        if duration is not None and duration > limit:
            yield Issue(
                ("video_url",),
                f"source is {duration} s long, at most {limit} s allowed",
                "value_error",
                f"trim the source to {limit} s or less",
            )

    return rule


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
        rules=(_crop_box,),
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
        rules=(_hdr_rules, _hdr_not_10s, _loop_rules),
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
        rules=(_hdr_rules, _loop_rules),
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
        rules=(_hdr_rules, _edit_strength_xor_auto),
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
        rules=(_source_position, _max_source(RAY32_REFRAME_MAX_SOURCE_S)),
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
    guess = _suggest(name, [*_BY_ALIAS, *_BY_ID])
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
