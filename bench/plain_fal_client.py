"""The baseline: what a plain script with the official fal-client does for a batch.

Upload each local file once, then for every job submit, poll to completion (fal-client's own
`get()`), fetch the result and download the video, in a thread pool. No database, no checks.
Usage: plain_fal_client.py BASE_URL JOBS.json OUT_DIR THREADS
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fc
import httpx

base, jobs_file, out_dir, threads = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
fc.QUEUE_URL_FORMAT, fc.REST_URL, fc.CDN_URL = base + "/", base, base  # point fal-client at the emulator
client = fal_client.SyncClient(key="bench-key")
jobs = json.loads(jobs_file.read_text())
out_dir.mkdir(parents=True, exist_ok=True)

urls: dict[str, str] = {}
for job in jobs:
    path = job["input"]["video_url"]
    if path not in urls:
        urls[path] = client.upload_file(Path(path))

http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=threads * 2))


def one(i_job: tuple[int, dict[str, Any]]) -> None:
    i, job = i_job
    handle = client.submit(job["endpoint"], {**job["input"], "video_url": urls[job["input"]["video_url"]]})
    result = handle.get()
    (out_dir / f"{i:05d}.mp4").write_bytes(http.get(result["video"]["url"]).content)


with ThreadPoolExecutor(max_workers=threads) as pool:
    list(pool.map(one, enumerate(jobs)))
print(json.dumps({"done": len(jobs)}))
