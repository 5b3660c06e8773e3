#!/bin/sh
# Several machines, one PostgreSQL database, no Docker: the whole recipe, one step per command.
#
#   once, on any machine:   createdb -h db.internal -U postgres batch_runner
#   once per release:       deploy/multi-machine.sh migrate       (before the new workers start)
#   on every machine:       deploy/multi-machine.sh check         (exit 0: ready; 11: see FAIL lines)
#   on every machine:       deploy/multi-machine.sh work [--until-done] [--run NAME] …
#                           (or batch-runner-work.service, whose ExecStart is the same command)
#   from any machine(s):    deploy/multi-machine.sh enqueue jobs/nightly-reframe.yaml
#
# What each machine needs: batch-runner and ffmpeg; the environment below (from a 0600 file);
# the sources and the output folder at the same paths on every machine (a shared mount, or URL
# sources). Enqueueing is idempotent, so every machine may run it; workers share the in-flight
# cap (--max-in-flight, give each the same) and, with the same --run NAME, one run's budget.
# Tested by tests/acceptance/test_deploy.py: two workers on one PostgreSQL against the emulator.
set -eu

: "${BATCH_RUNNER_DB:?set BATCH_RUNNER_DB=postgresql://USER@HOST/DB (the one database every machine shares)}"
BR="${BATCH_RUNNER_EXE:-batch-runner}"
case "$BATCH_RUNNER_DB" in
    postgresql://* | postgresql+psycopg://*) ;;
    *) echo "multi-machine.sh: BATCH_RUNNER_DB must be a PostgreSQL URL: SQLite is one machine's file" >&2; exit 2 ;;
esac

step="${1:-}"
[ $# -gt 0 ] && shift
case "$step" in
    migrate) exec "$BR" db upgrade ;;
    check) exec "$BR" health "$@" ;;
    enqueue) exec "$BR" enqueue "$@" ;;
    work) exec "$BR" work --concurrency "${CONCURRENCY:-16}" --max-in-flight "${MAX_IN_FLIGHT:-40}" "$@" ;;
    *) echo "usage: multi-machine.sh migrate | check | enqueue MANIFEST | work [WORK OPTIONS]" >&2; exit 2 ;;
esac
