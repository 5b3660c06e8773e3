"""Probing with the real ffprobe: exact durations, stream facts, clear errors, timeouts, URLs."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from batch_runner import probe
from batch_runner.errors import ProbeError, ToolMissingError
from batch_runner.media import make_clip


def run(path: Path, kind: str = "video"):
    src = str(path)
    return probe.probe(src, kind, probe.fingerprint(src), timeout_s=20)


@pytest.mark.parametrize(("name", "duration"), [("c5", "5"), ("c5_04", "5.04"), ("c0_5", "0.5"), ("c30_04", "30.04")])
def test_duration_is_exact(media, name, duration):
    assert run(media[name]).duration == Decimal(duration)


def test_stream_facts(media):
    r = run(media["c5"])
    assert (r.width, r.height, r.codec, r.fps, r.rotation) == (64, 36, "h264", "50/1", 0)
    assert r.has_audio and r.size_bytes == media["c5"].stat().st_size
    assert not run(media["c5_04"]).has_audio


def test_rotation_is_reported(tmp_path, media):
    import ffmpeg

    out = tmp_path / "rot.mp4"
    ffmpeg.input(str(media["c0_5"])).output(str(out), c="copy", **{"metadata:s:v:0": "rotate=90"}).run(quiet=True)
    r = run(out)
    assert r.rotation in (90, 270) and r.display_size == (36, 64)


def test_image_probes_as_image(media):
    r = run(media["image"], "image")
    assert (r.kind, r.duration, r.width) == ("image", None, 64)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("text", "not a video file"),
        ("truncated", "truncated or corrupt"),
        ("image", "is an image, not a video"),
    ],
)
def test_bad_sources_give_clear_errors(media, name, needle):
    with pytest.raises(ProbeError) as err:
        run(media[name])
    assert needle in str(err.value) and str(media[name]) in str(err.value)


def test_missing_and_empty_files_fail_before_ffprobe(media, tmp_path):
    with pytest.raises(ProbeError, match="file not found"):
        probe.fingerprint(str(tmp_path / "nope.mp4"))
    with pytest.raises(ProbeError, match=r"empty \(0 bytes\)"):
        probe.fingerprint(str(media["empty"]))


def test_fingerprint_changes_with_content(tmp_path, media):
    p = tmp_path / "x.mp4"
    p.write_bytes(media["c0_5"].read_bytes())
    first = probe.fingerprint(str(p))
    assert probe.fingerprint(str(p)) == first
    p.write_bytes(media["c5_04"].read_bytes())
    assert probe.fingerprint(str(p)) != first


def test_missing_ffprobe_is_a_tool_error(media, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match="apt-get install ffmpeg"):
        probe.require_ffprobe()
    with pytest.raises(ToolMissingError):
        run(media["c5"])


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def end_headers(self):
        self.send_header("ETag", '"v1"')
        super().end_headers()


@pytest.fixture
def http_root(tmp_path, media):
    root = tmp_path / "www"
    root.mkdir()
    (root / "clip.mp4").write_bytes(media["c5_04"].read_bytes())
    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_is_probed_over_http(http_root):
    url = f"{http_root}/clip.mp4"
    fp = probe.fingerprint(url)
    assert fp.startswith(f'url:{url}:"v1":') and probe.cacheable(fp)
    assert probe.probe(url, "video", fp, timeout_s=20).duration == Decimal("5.04")


def test_missing_url_is_unreachable(http_root):
    with pytest.raises(ProbeError, match="unreachable: HTTP 404"):
        probe.fingerprint(f"{http_root}/gone.mp4")


def test_closed_port_is_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ProbeError, match="unreachable"):
        probe.fingerprint(f"http://127.0.0.1:{port}/a.mp4")


def _ffprobe_children(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ffprobe" in cmd and marker.encode() in cmd:
                pids.append(int(pid))
    return pids


def test_timeout_kills_ffprobe():
    # A server that accepts the connection and never answers: ffprobe would wait a long time.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/hang.mp4"
    try:
        with pytest.raises(ProbeError, match="timed out after 1 s and was killed"):
            probe.probe(url, "video", f"url:{url}", timeout_s=1)
        time.sleep(0.2)
        assert _ffprobe_children(url) == []
    finally:
        srv.close()


def test_run_parallel_respects_the_bound():
    active, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        if i == 3:
            raise ProbeError("item 3 failed")
        return i * 2

    results = probe.run_parallel(work, range(12), concurrency=3)
    assert peak[0] <= 3
    assert results[:3] == [0, 2, 4] and isinstance(results[3], ProbeError) and results[11] == 22


def test_generated_durations_do_not_depend_on_frame_rate(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", duration="2", size="32x18", rate=25, audio=False)
    assert run(clip).duration == Decimal(2)


def test_planning_probes_local_files_in_process_and_urls_with_ffprobe(media, http_root, tmp_path):
    url = f"{http_root}/clip.mp4"
    srcs = [str(media["c5"]), str(media["text"]), url, str(media["c0_5"])]
    fps = {s: probe.fingerprint(s) for s in srcs}
    got = probe.probe_sources(srcs, "video", fps, timeout_s=20, concurrency=3)
    assert [getattr(g, "duration", "refused") for g in got] == [Decimal(5), "refused", Decimal("5.04"), Decimal("0.5")]
    assert isinstance(got[1], ProbeError) and "not a video file" in got[1].message  # ffprobe's words
    assert got[0] == run(media["c5"]) and got[2].fingerprint == fps[url]
    with pytest.raises(ToolMissingError):  # a URL is never read in process: ffprobe's timeout holds
        probe.probe_source(url, "video", fps[url], timeout_s=20, cmd=str(tmp_path / "no-ffprobe"))
