#!/bin/sh
# make demo: sample media, the plan (what it will cost), then the real run on the embedded fal
# emulator: reframed videos under out/, and the cost summary. Nothing real is called.
set -e
BR="$1"; DEMO="$2"
mkdir -p "$DEMO"
echo "== making sample clips and stills in jobs/media (ffmpeg)" >&2
"$BR" samples jobs/media --clips 3 --images 3 >/dev/null
echo "== batch-runner db upgrade   (creates the job database $DEMO/demo.db on purpose)" >&2
"$BR" --db "$DEMO/demo.db" db upgrade
echo "== batch-runner plan jobs/nightly-reframe.yaml   (a dry run: what will it cost?)" >&2
"$BR" --db "$DEMO/demo.db" plan jobs/nightly-reframe.yaml
echo "== batch-runner run jobs/nightly-reframe.yaml --emulator" >&2
"$BR" --db "$DEMO/demo.db" run jobs/nightly-reframe.yaml --emulator
echo "== the reframed videos (each with a .json provenance sidecar):" >&2
ls out/nightly-reframe/*.mp4 >&2
echo "== running it again adds and pays for nothing:" >&2
"$BR" --db "$DEMO/demo.db" run jobs/nightly-reframe.yaml --emulator
