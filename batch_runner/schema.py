"""Endpoint input schemas: fields, validation issues, and the checks of an input against them.

The type, enum, length and required checks are generic; the cross-field rules below them are the
Luma endpoints' own (HDR, loop, crop box, source position, source length), which catalog.py
attaches to each endpoint. Issues are shaped like items of fal's 422 `detail` list.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import shorten, type_name


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


# --------------------------------------------------------------------------- validation


def suggest(value: Any, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(str(value)[:200], list(choices), n=1, cutoff=0.5)
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


def check_fields(
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
                    suggest(name, by_name) or f"known fields: {', '.join(by_name)}",
                )
            continue
        if value is None:
            continue
        yield from _check_value(f, value, (*loc, name), allow_extra)
    for f in fields:
        if f.required and params.get(f.name) is None:
            yield Issue(
                (*loc, f.name), "field required", "missing", f"set {f.name} in defaults, params or a rows column"
            )


_TYPE_HINTS = {
    "string": "quote the value in YAML",
    "enum": "quote the value in YAML",
    "integer": "write a whole number",
    "number": "write a number",
    "boolean": "write true or false",
    "object": "write a mapping of its fields",
    "list": "write a list, e.g. [a, b]",
}


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return type_name(value)
    return f"{type_name(value)} {shorten(value)}"


def _quote(value: str) -> str:
    return f'"{value}"' if len(value) <= 60 and '"' not in value else shorten(value)


def _check_value(f: Field, value: Any, loc: tuple[str, ...], allow_extra: bool) -> Iterable[Issue]:
    if not _type_ok(f.type, value):
        want = "one of " + ", ".join(f.enum) if f.type == "enum" else f"a {f.type}"
        yield Issue(loc, f"must be {want}, got {_got(value)}", f"{f.type}_type", _TYPE_HINTS.get(f.type))
        return
    if isinstance(value, str) and "\x00" in value:
        yield Issue(loc, "contains a NUL character", "value_error", "remove the \\0 from the value")
    elif f.type == "string" and f.required and not value.strip():
        yield Issue(loc, "must not be empty", "string_too_short", f"give a {f.name}")
    elif f.type == "enum" and value not in f.enum:
        yield Issue(
            loc,
            f"{_quote(value)} is not one of {', '.join(f.enum)}",
            "enum",
            suggest(value, f.enum) or "pick one of them",
        )
    elif f.type == "string" and f.max_length and len(value) > f.max_length:
        yield Issue(loc, f"is {len(value)} characters, at most {f.max_length} allowed", "string_too_long", "shorten it")
    elif f.type == "object":
        yield from check_fields(f.fields, value, loc, allow_extra)
    elif f.type == "list":
        for i, item in enumerate(value):
            if not _type_ok(f.items or "string", item):
                yield Issue((*loc, str(i)), f"must be a {f.items}, got {_got(item)}", f"{f.items}_type", "quote it")


# --------------------------------------------------------------------------- cross-field rules


def hdr_rules(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("hdr") and p.get("resolution", "540p") not in ("720p", "1080p"):
        yield Issue(("hdr",), "needs resolution 720p or 1080p", "value_error", "set resolution: 720p or drop hdr")
    if p.get("exr_export") and not p.get("hdr"):
        yield Issue(("exr_export",), "needs hdr: true", "value_error", "set hdr: true or drop exr_export")


def loop_rules(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if not p.get("loop"):
        return
    if p.get("duration", "5s") != "5s":
        yield Issue(("loop",), "is only valid for 5s videos", "value_error", "set duration: 5s")
    if p.get("hdr"):
        yield Issue(("loop",), "is only valid for standard dynamic range (hdr: false)", "value_error")
    if p.get("end_image_url"):
        yield Issue(("loop",), "cannot be combined with end_image_url", "value_error")


def hdr_not_10s(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("hdr") and p.get("duration") == "10s":
        yield Issue(("hdr",), "is not supported with 10s videos", "value_error", "set duration: 5s")


def edit_strength_xor_auto(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    if p.get("edit_strength") and p.get("auto_controls"):
        yield Issue(
            ("edit_strength",),
            "cannot be combined with auto_controls",
            "value_error",
            "drop one of edit_strength and auto_controls",
        )


def crop_box(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
    for lo, hi in (("x_start", "x_end"), ("y_start", "y_end")):
        for name in (lo, hi):
            if p.get(name) is not None and p[name] < 0:
                yield Issue((name,), "must be 0 or more", "greater_than_equal")
        if p.get(lo) is not None and p.get(hi) is not None and p[lo] >= p[hi]:
            yield Issue((hi,), f"must be greater than {lo}", "value_error")


def source_position(p: dict[str, Any], _d: Decimal | None) -> Iterable[Issue]:
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


def _seconds(seconds: Decimal) -> str:
    """A duration normalised (35, 35.04): the same figure whether ffprobe printed "35.000000" or
    the probe cache kept "35" (domain.format_seconds's twin; schema sits beside domain, not above)."""
    d = seconds.normalize()
    return f"{d.quantize(Decimal(1)) if d == d.to_integral_value() else d:f}"


def max_source(limit: Decimal) -> Rule:
    def rule(p: dict[str, Any], duration: Decimal | None) -> Iterable[Issue]:
        if duration is not None and duration > limit:
            yield Issue(
                ("video_url",),
                f"source is {_seconds(duration)} s long, at most {_seconds(limit)} s allowed",
                "value_error",
                f"trim the source to {_seconds(limit)} s or less",
            )

    return rule
