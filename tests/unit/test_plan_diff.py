"""`plan --diff` without a database: tonight's planned jobs against the stored ones, by key (the
same job), by output path (a changed job that bills again) and what the manifest no longer makes."""

from __future__ import annotations

from decimal import Decimal

from batch_runner.domain import Estimate, JobSpec, JobState
from batch_runner.planner import diff_jobs
from batch_runner.records import JobOutline


def _planned(key: str, output: str, micro_usd: int = 300_000) -> JobSpec:
    est = Estimate(micro_usd, Decimal(5), "second", 60_000, "t@1", True)
    return JobSpec("b", "ep", f"/src/{key}.mp4", "video_url", {}, output, key=key, estimate=est)


def _stored(key: str, output: str, state: JobState = JobState.SUCCEEDED) -> JobOutline:
    return JobOutline(key, output, state, 300_000, f"/src/{key}.mp4")


def test_the_same_key_is_unchanged_and_keeps_its_state():
    diff = diff_jobs([_planned("a", "/out/a.mp4")], [_stored("a", "/out/a.mp4", JobState.FAILED)])
    assert [(j.key, s) for j, s in diff.unchanged] == [("a", JobState.FAILED)]
    assert diff.new == [] and diff.changed == [] and diff.removed == []
    assert diff.added_micro_usd == 0


def test_a_new_key_for_a_stored_output_is_changed_and_bills_again():
    diff = diff_jobs([_planned("a2", "/out/a.mp4", 450_000)], [_stored("a", "/out/a.mp4")])
    [(job, old)] = diff.changed
    assert (job.key, old.key) == ("a2", "a")
    assert diff.removed == []  # the replaced job is not also "removed"
    assert diff.added_micro_usd == 450_000


def test_the_newest_stored_job_for_an_output_is_the_one_replaced():
    stored = [_stored("old", "/out/a.mp4"), _stored("newer", "/out/a.mp4")]
    diff = diff_jobs([_planned("newest", "/out/a.mp4")], stored)
    assert [old.key for _, old in diff.changed] == ["newer"]
    # the older job for the same output is neither planned nor replaced, but its output is planned
    assert diff.removed == []


def test_a_stored_job_the_manifest_no_longer_makes_is_removed():
    diff = diff_jobs([_planned("a", "/out/a.mp4")], [_stored("a", "/out/a.mp4"), _stored("gone", "/out/gone.mp4")])
    assert [r.key for r in diff.removed] == ["gone"]


def test_only_new_and_changed_jobs_add_to_tonights_cost():
    planned = [
        _planned("same", "/out/same.mp4", 100_000),
        _planned("new", "/out/new.mp4", 200_000),
        _planned("changed", "/out/changed.mp4", 400_000),
    ]
    stored = [_stored("same", "/out/same.mp4"), _stored("was", "/out/changed.mp4")]
    diff = diff_jobs(planned, stored)
    assert [j.key for j in diff.new] == ["new"]
    assert diff.added_micro_usd == 600_000
    assert diff.to_json()["added_cost_usd"] == "0.60"
    assert diff.to_json()["unchanged"] == [{"key": "same", "state": "succeeded"}]


def test_an_empty_table_makes_every_planned_job_new():
    diff = diff_jobs([_planned("a", "/out/a.mp4"), _planned("b", "/out/b.mp4")], [])
    assert [j.key for j in diff.new] == ["a", "b"] and diff.added_micro_usd == 600_000
