"""Benchmark prune: how long each of its transactions holds the database (what a live worker
may wait for) against pruning everything in one transaction, on SQLite and PostgreSQL.

20,000 finished jobs of one batch, each with one settled attempt and five events, all 100 days
old. Baseline, in the same run on a copy of the same rows: the same prune in one transaction
(`jobs_per_tx` = every job). Prints JSON; figures are wall times on this machine.

Usage: python bench/bench_prune.py [--jobs 20000] [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from batch_runner.db import engine as db_engine  # noqa: E402
from batch_runner.db import prune as db_prune  # noqa: E402
from batch_runner.db.models import Attempt, Batch, Event, Job, table  # noqa: E402


def fill(url: str, jobs: int) -> None:
    engine = db_engine.open_engine(url, auto_migrate=True)
    old = datetime.now(UTC) - timedelta(days=100)
    job = {"batch_id": 1, "endpoint": "bench/reframe", "input_json": "{}", "state": "succeeded"}
    job |= {"estimate_micro_usd": 300_000, "billable_units": "5", "unit": "second", "price_table": "t@1"}
    job |= {"price_verified": True, "tags_json": "[]", "attempt_count": 1, "created_at": old, "updated_at": old}
    with engine.begin() as conn:
        conn.execute(insert(table(Batch)).values(id=1, name="bench", created_at=old, updated_at=old))
        conn.execute(
            insert(table(Job)), [{**job, "id": i, "key": f"k{i}", "output_path": f"/o/{i}"} for i in range(1, jobs + 1)]
        )
        attempt = {"number": 1, "batch_id": 1, "state": "succeeded", "billed_micro_usd": 300_000, "created_at": old}
        attempt |= {"price_source": "fal pricing API", "finished_at": old}
        conn.execute(insert(table(Attempt)), [{**attempt, "id": i, "job_id": i} for i in range(1, jobs + 1)])
        event = {"at": old, "batch_id": 1, "host": "h", "pid": 1, "user": "u", "kind": "bench", "details_json": "{}"}
        conn.execute(
            insert(table(Event)), [{**event, "job_id": i // 5 + 1, "attempt_id": i // 5 + 1} for i in range(jobs * 5)]
        )
    engine.dispose()


def measure(url: str, jobs_per_tx: int) -> dict[str, float]:
    engine = db_engine.open_engine(url)
    durations: list[float] = []
    original = db_prune._prune_some

    def timed(*args: object) -> db_prune.PruneCounts:
        start = time.perf_counter()
        try:
            return original(*args)  # type: ignore[arg-type]
        finally:
            durations.append(time.perf_counter() - start)

    db_prune._prune_some = timed  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        db_prune.prune(engine, datetime.now(UTC) - timedelta(days=90), jobs_per_tx=jobs_per_tx)
        total = time.perf_counter() - start
    finally:
        db_prune._prune_some = original
        engine.dispose()
    durations.sort()
    return {"total_s": round(total, 2), "transactions": len(durations), "max_tx_ms": round(durations[-1] * 1000, 1)}


def pg_database(admin: str, name: str, create: bool) -> str:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        if create:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--pg", help="an admin URL of a PostgreSQL server to bench on too")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ["sqlite"] + (["postgresql"] if args.pg else []):
            figures = {}
            for label, per_tx in (("batched", db_prune.PRUNE_JOBS_PER_TX), ("one_transaction", args.jobs)):
                if backend == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'{label}.db'}"
                else:
                    url = pg_database(args.pg, f"bench_prune_{label}", create=True)
                fill(url, args.jobs)
                figures[label] = measure(url, per_tx)
                if backend != "sqlite":
                    pg_database(args.pg, f"bench_prune_{label}", create=False)
            ratio = figures["batched"]["max_tx_ms"] / (figures["one_transaction"]["max_tx_ms"] or 1)
            results[backend] = {**figures, "longest_hold_vs_one_transaction": round(ratio, 3)}
    print(json.dumps({"jobs": args.jobs, "events": args.jobs * 5, **results}, indent=2))


if __name__ == "__main__":
    main()
