"""The budget rules without a database: which budget stops the next job, what is left of it, the
warning threshold (once per run), and what a budget stop says."""

from __future__ import annotations

from batch_runner import budget
from batch_runner.budget import BudgetStop


def test_a_job_that_fits_the_run_budget_exactly_is_not_stopped():
    assert budget.run_stop(1, 400, 600, 1_000) is None


def test_a_job_one_micro_dollar_over_the_run_budget_is_stopped_with_what_is_left():
    assert budget.run_stop(7, 401, 600, 1_000) == BudgetStop(7, 401, 400, 1_000, budget.BudgetScope.RUN)


def test_a_run_without_a_budget_is_never_stopped_by_it():
    assert budget.run_stop(1, 10**12, 10**12, None) is None


def test_a_daily_budget_counts_what_the_last_day_committed():
    assert budget.daily_stop(3, 300, 1_000, 700, budget.BudgetScope.BATCH_PER_DAY) is None
    assert budget.daily_stop(3, 301, 1_000, 700, budget.BudgetScope.ACCOUNT_PER_DAY) == BudgetStop(
        3, 301, 300, 1_000, budget.BudgetScope.ACCOUNT_PER_DAY
    )


def test_a_day_already_overspent_leaves_a_negative_amount():
    stop = budget.daily_stop(3, 1, 1_000, 1_200, budget.BudgetScope.BATCH_PER_DAY)
    assert stop is not None and stop.left_micro_usd == -200


def test_no_daily_budget_never_stops():
    assert budget.daily_stop(3, 10**12, None, 10**12, budget.BudgetScope.BATCH_PER_DAY) is None


def test_the_warning_fires_at_the_threshold_and_only_once():
    assert budget.crosses_warning(500, 500, warned=False)
    assert not budget.crosses_warning(499, 500, warned=False)
    assert not budget.crosses_warning(900, 500, warned=True)
    assert not budget.crosses_warning(900, None, warned=False)


def test_the_warning_names_the_run_the_committed_amount_and_the_threshold():
    assert budget.warning_message("nightly", 1_250_000, 1_000_000) == (
        "run nightly has committed $1.25, past its $1.00 warning threshold"
    )


def test_a_run_budget_stop_says_what_is_left_and_what_did_not_run():
    message = budget.stop_message(budget.BudgetScope.RUN, 400_000, 1_000_000, 3)
    assert message == "budget stop (run budget): $0.40 of $1.00 left, not enough for the next job; 3 job(s) did not run"


def test_a_daily_budget_stop_says_the_window_and_never_a_negative_amount():
    message = budget.stop_message(budget.BudgetScope.ACCOUNT_PER_DAY, -200, 1_000_000, 1)
    assert "(account per day budget): $0.00 of $1.00 left in the last 24 h" in message
