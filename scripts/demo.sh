#!/bin/sh
# make demo: sample media, then the plan of the nightly reframe manifest (no API call, no cost).
set -e
BR="$1"; DEMO="$2"
mkdir -p "$DEMO"
echo "== making sample clips and stills in jobs/media (ffmpeg)" >&2
"$BR" samples jobs/media --clips 3 --images 3 >/dev/null
echo "== batch-runner plan jobs/nightly-reframe.yaml" >&2
"$BR" --db "$DEMO/demo.db" plan jobs/nightly-reframe.yaml
echo "== planning it again: every probe now comes from the cache" >&2
"$BR" --db "$DEMO/demo.db" plan jobs/nightly-reframe.yaml --json > "$DEMO/plan.json"
echo "   plan JSON written to $DEMO/plan.json" >&2
