"""The budget rules as pure decisions: a run's budget, a batch's and the account's rolling 24 h,
and the warning threshold. The claim reads the numbers under its dispatch lock and asks these
rules; the messages a budget stop or a warning prints are written here, once."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .domain import format_usd


class BudgetScope(str, enum.Enum):
    """Which budget a stop is about."""

    RUN = "run"  # the run's budget: --max-cost, the manifest's, BATCH_RUNNER_MAX_USD_PER_RUN
    BATCH_PER_DAY = "batch per day"  # the manifest's daily budget, over the last 24 h
    ACCOUNT_PER_DAY = "account per day"  # BATCH_RUNNER_MAX_USD_PER_DAY, every batch, the last 24 h


STOP_HINT = "raise the budget (--max-cost, the manifest's budget, BATCH_RUNNER_MAX_USD_PER_DAY) and run again"


@dataclass(frozen=True)
class BudgetStop:
    """The next job's estimate does not fit in what is left of a budget."""

    job_id: int
    estimate_micro_usd: int
    left_micro_usd: int
    budget_micro_usd: int = 0
    scope: BudgetScope = BudgetScope.RUN


def daily_stop(job_id: int, estimate: int, limit: int | None, spent: int, scope: BudgetScope) -> BudgetStop | None:
    """A rolling-24 h budget (a batch's or the account's): the job must fit in `limit` on top of
    what the last 24 h committed. None: it fits (or there is no such budget)."""
    if limit is None or spent + estimate <= limit:
        return None
    return BudgetStop(job_id, estimate, limit - spent, limit, scope)


def run_stop(job_id: int, estimate: int, reserved: int, budget: int | None) -> BudgetStop | None:
    """A run's budget: what the run has reserved (billed, or reserved while open) plus this job's
    estimate must not exceed it. None: it fits (or the run has no budget)."""
    if budget is None or reserved + estimate <= budget:
        return None
    return BudgetStop(job_id, estimate, budget - reserved, budget, BudgetScope.RUN)


def crosses_warning(committed: int, warn_at: int | None, warned: bool) -> bool:
    """True once per run: the claim that brings the committed figure to the threshold or past it."""
    return warn_at is not None and not warned and warn_at <= committed


def warning_message(run: str, committed: int, warn_at: int) -> str:
    return f"run {run} has committed ${format_usd(committed)}, past its ${format_usd(warn_at)} warning threshold"


def stop_message(scope: BudgetScope | None, left: int | None, limit: int | None, not_run: int) -> str:
    """What a run stopped by a budget says: which budget, what is left of it, and what did not run."""
    scope = scope or BudgetScope.RUN
    window = " in the last 24 h" if scope != BudgetScope.RUN else ""
    return (
        f"budget stop ({scope.value} budget): ${format_usd(max(0, left or 0))} "
        f"of ${format_usd(limit or 0)} left{window}, not enough for the next job; "
        f"{not_run} job(s) did not run"
    )
