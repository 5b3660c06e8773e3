"""Chargeback and line items on both databases: two manifests with their own project and tags
(one with a paid retry, one text-to-video), and every figure `report` gives by project, by tag
and per line item equals a sum computed here from the emulators' own record of what they billed."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.integration.run_helpers import REFRAME_MANIFEST, make_bench

T2V_MANIFEST = """batch: b2
project: docs
endpoint: ray-3.2/text-to-video
tags: [spring]
defaults:
  resolution: 540p
  duration: 5s
sources:
  - rows: prompts.jsonl
output_root: out
output: "{batch}/{stem}_{aspect_ratio}.mp4"
"""
PROMPT = "A quiet harbour <at> dawn & mist, gulls circling over the water"


def _two_projects(tmp_path, media, emulator_factory, db_url=None):
    """Batch b (project promo, tags spring+hero; one paid failure) and b2 (project docs, tag
    spring, text-to-video); returns the bench and the emulators' cost per request id, by endpoint."""
    manifest = REFRAME_MANIFEST + "project: promo\ntags: [spring, hero]\n"
    bench = make_bench(
        tmp_path, media, emulator_factory(faults="fail=1/1"), clips=1, manifest_text=manifest, db_url=db_url
    )
    bench.run()
    billed: dict[str, dict[str, Decimal]] = {}
    for row in bench.emulator_log():
        if row["request_id"]:
            billed.setdefault(row["endpoint"], {})[row["request_id"]] = Decimal(row["cost_usd"] or "0")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"name": "harbour", "prompt": PROMPT, "aspect_ratio": "16:9"}))
    bench.manifest = tmp_path / "t2v.yaml"
    bench.manifest.write_text(T2V_MANIFEST)
    bench.emulator = emulator_factory()
    bench.run()
    for row in bench.emulator_log():
        if row["request_id"]:
            billed.setdefault(row["endpoint"], {})[row["request_id"]] = Decimal(row["cost_usd"] or "0")
    return bench, billed


def _cli(env, *args):
    result = CliRunner().invoke(cli, ["report", *args], env=env)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_chargeback_by_project_and_tag_equals_the_emulators_bills(tmp_path, media, emulator_factory, db_url):
    bench, billed = _two_projects(tmp_path, media, emulator_factory, db_url)
    by_endpoint = {k.rsplit("/", 1)[-1]: sum(v.values()) for k, v in billed.items()}
    reframe, t2v = by_endpoint["reframe"], by_endpoint["text-to-video"]
    assert reframe > 0 and t2v > 0
    env = {"BATCH_RUNNER_DB": bench.db_url}

    groups = json.loads(_cli(env, "--group-by", "project", "--format", "json"))["groups"]
    assert {k: Decimal(g["billed_usd"]) for k, g in groups.items()} == {"promo": reframe, "docs": t2v}
    assert groups["promo"]["jobs"] == 2 and groups["docs"]["jobs"] == 1

    rows = list(csv.DictReader(io.StringIO(_cli(env, "--project", "docs", "--group-by", "project", "--format", "csv"))))
    assert [(r["row_type"], r["project"]) for r in rows] == [("group", "docs"), ("total", "TOTAL")]
    assert Decimal(rows[1]["billed_usd"]) == t2v and rows[1]["jobs_succeeded"] == "1" and rows[1]["jobs_failed"] == "0"

    hero = json.loads(_cli(env, "--tag", "hero", "--group-by", "tag", "--format", "json"))
    assert Decimal(hero["total"]["billed_usd"]) == reframe and hero["scope"]["tags"] == ["hero"]
    spring = json.loads(_cli(env, "--tag", "spring", "--tag", "nope", "--format", "json"))["total"]
    assert Decimal(spring["billed_usd"]) == reframe + t2v and spring["jobs"] == 3
    assert json.loads(_cli(env, "--tag", "nope", "--format", "json"))["total"]["jobs"] == 0
    both = json.loads(_cli(env, "--project", "promo", "--tag", "spring", "--format", "json"))["total"]
    assert Decimal(both["billed_usd"]) == reframe and both["jobs"] == 2


def test_line_items_one_per_attempt_with_totals_apart(tmp_path, media, emulator_factory):
    bench, billed = _two_projects(tmp_path, media, emulator_factory)
    cost = {rid: c for per in billed.values() for rid, c in per.items()}
    env = {"BATCH_RUNNER_DB": bench.db_url}
    attempts = bench.sql("select request_id, number from attempts")
    assert len(attempts) == 4 and max(n for _, n in attempts) == 2  # three jobs, one retried

    data = json.loads(_cli(env, "--items", "--format", "json"))
    items, totals = data["items"], data["totals"]
    assert len(items) == 4 and all(i["row_type"] == "item" for i in items)
    assert {i["request_id"]: Decimal(i["billed_usd"]) for i in items} == cost
    assert Decimal(totals["billed_usd"]) == sum(cost.values()) and totals["attempts"] == 4 and totals["jobs"] == 3
    assert Decimal(totals["job_estimate_usd"]) == sum(
        {i["job_id"]: Decimal(i["job_estimate_usd"]) for i in items}.values()
    )
    t2v = [i for i in items if i["batch"] == "b2"]
    assert len(t2v) == 1 and t2v[0]["project"] == "docs" and t2v[0]["params"]["prompt"] == PROMPT
    assert t2v[0]["source"] is None and t2v[0]["tags"] == ["spring"] and t2v[0]["billed_source"]
    retried = sorted(
        (i for i in items if i["job_id"] == next(j["job_id"] for j in items if j["attempt"] == 2)),
        key=lambda i: i["attempt"],
    )
    assert [(i["attempt"], i["attempt_state"], i["job_state"]) for i in retried] == [
        (1, "failed", "succeeded"),
        (2, "succeeded", "succeeded"),
    ]
    assert retried[0]["delivered_seconds"] is None and Decimal(retried[1]["delivered_seconds"]) > 0
    assert sum(Decimal(i["delivered_seconds"] or 0) for i in items) == Decimal(totals["delivered_seconds"])

    text = _cli(env, "--items")  # CSV by default
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["row_type"] for r in rows] == ["item"] * 4 + ["total"]
    assert sum(Decimal(r["billed_usd"]) for r in rows[:-1]) == Decimal(rows[-1]["billed_usd"]) == sum(cost.values())
    assert json.loads(rows[0]["params"]) == items[0]["params"] and rows[-1]["request_id"] == ""

    table = CliRunner().invoke(cli, ["report", "--items", "--format", "table"], env=env)
    assert table.exit_code == 2 and "--format csv" in table.stderr and table.stdout == ""


def test_line_items_are_streamed_as_the_same_text_whatever_the_pieces(
    tmp_path, media, emulator_factory, db_url, monkeypatch
):
    """`report --items` is written as the ledger streams by: its JSON is json.dumps's text of
    the whole, its scope names the same days as the grouped report's, and the text is the same
    read a row at a time, handed on a line at a time, or written to a file."""
    from batch_runner import line_items
    from batch_runner.db import ledger

    bench, _ = _two_projects(tmp_path, media, emulator_factory, db_url)
    env = {"BATCH_RUNNER_DB": bench.db_url}
    now = datetime.now(UTC).date()
    week, today = (now - timedelta(days=7)).isoformat(), now.isoformat()
    windows = {0: [], 1: ["--since", "2000-01-01"], 2: ["--since", week], 3: ["--since", week, "--until", today]}
    for i, window in windows.items():  # all time; over a year (the days with spend); a week; before today
        text = _cli(env, "--items", "--format", "json", *window)
        data = json.loads(text)
        assert text == json.dumps(data, indent=2) + "\n" and len(data["items"]) == (0 if i == 3 else 4)
        assert data["scope"] == json.loads(_cli(env, "--format", "json", *window))["scope"]

    whole = {fmt: _cli(env, "--items", "--format", fmt) for fmt in ("json", "csv")}
    grouped = _cli(env, "--format", "json", "--group-by", "day")
    monkeypatch.setattr(ledger, "STREAM_ROWS", 1)  # the retried job's two attempts come in two fetches
    monkeypatch.setattr(line_items, "CHUNK_LINES", 1)
    for fmt, text in whole.items():
        assert _cli(env, "--items", "--format", fmt) == text
        result = CliRunner().invoke(cli, ["report", "--items", "--format", fmt, "-o", str(tmp_path / "items")], env=env)
        assert result.exit_code == 0 and (tmp_path / "items").read_text() == text
    assert _cli(env, "--format", "json", "--group-by", "day") == grouped
    assert not list(tmp_path.glob(".items.*"))  # no temporary file left behind
