"""Outputs are checked and sources probed in process through libavformat (PyAV); ffprobe stays the
reference. On a corpus of awkward media both must give the same figures (for sources: the same
ProbeResult), or both refuse the file (for sources: with the same error)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from batch_runner import avprobe, probe
from batch_runner.errors import ProbeError, ToolMissingError

SMALL = "testsrc2=size=64x36:rate=25"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def _make(folder: Path, name: str) -> Path:
    out = folder / name
    if out.exists():
        return out
    if name == "plain.mp4":
        _ffmpeg("-f", "lavfi", "-i", SMALL, "-t", "2", "-pix_fmt", "yuv420p", str(out))
    elif name == "rotated.mp4":
        _ffmpeg("-i", str(_make(folder, "plain.mp4")), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    elif name == "vfr.mp4":  # frames dropped where the picture does not change: variable frame rate
        _ffmpeg(
            "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=25,setpts='if(lt(N,10),N,N*3)/25/TB'",
            "-t", "3", "-fps_mode", "vfr", "-pix_fmt", "yuv420p", str(out),
        )  # fmt: skip
    elif name == "long-audio.mp4":  # 1 s of video, 3 s of audio
        _ffmpeg(
            "-f", "lavfi", "-i", f"{SMALL}:duration=1", "-f", "lavfi", "-i", "sine=duration=3",
            "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
        )  # fmt: skip
    elif name == "vp8.webm":
        _ffmpeg("-f", "lavfi", "-i", SMALL, "-t", "1.5", "-c:v", "libvpx", "-b:v", "100k", str(out))
    elif name == "short.mp4":  # 0.52 s
        _ffmpeg("-f", "lavfi", "-i", SMALL, "-t", "0.52", "-pix_fmt", "yuv420p", str(out))
    elif name == "thirty.mp4":  # exactly 30 s, at 5 fps to stay small
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x18:rate=5", "-t", "30", "-pix_fmt", "yuv420p", str(out))
    elif name == "cover.mp4":  # audio with a cover image: no video
        art = folder / "art.png"
        _ffmpeg("-f", "lavfi", "-i", "color=c=red:size=16x16", "-frames:v", "1", str(art))
        _ffmpeg(
            "-f", "lavfi", "-i", "sine=duration=1", "-i", str(art), "-map", "0", "-map", "1",
            "-c:a", "aac", "-c:v", "png", "-disposition:v", "attached_pic", str(out),
        )  # fmt: skip
    elif name == "truncated.mp4":  # the first third of a faststart-less mp4: no moov atom
        data = _make(folder, "plain.mp4").read_bytes()
        out.write_bytes(data[: len(data) // 3])
    elif name == "rot180.mkv":  # rotated, but matroska: no display matrix for ffprobe 5.1
        _ffmpeg("-i", str(_make(folder, "rotated.mp4")), "-c", "copy", "-metadata:s:v:0", "rotate=180", str(out))
    elif name == "clip.ts":  # MPEG-TS: durations estimated from timestamps, audio and video
        _ffmpeg(
            "-f", "lavfi", "-i", f"{SMALL}:duration=1.2", "-f", "lavfi", "-i", "sine=duration=1.2",
            "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
        )  # fmt: skip
    elif name == "phone.mov":  # HEVC in QuickTime with a 270° display matrix, as a phone records it
        hevc = folder / "hevc.mov"
        _ffmpeg(
            "-f", "lavfi", "-i", f"{SMALL}:duration=1", "-c:v", "libx265", "-x265-params", "log-level=error",
            "-tag:v", "hvc1", str(hevc),
        )  # fmt: skip
        _ffmpeg("-i", str(hevc), "-c", "copy", "-metadata:s:v:0", "rotate=270", str(out))
    elif name in ("still.png", "still.jpg"):
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=48x32", "-frames:v", "1", str(out))
    elif name == "empty.mp4":
        out.write_bytes(b"")
    elif name == "text.mp4":
        out.write_text("not a video at all\n")
    return out


CORPUS = ("plain.mp4", "rotated.mp4", "vfr.mp4", "long-audio.mp4", "vp8.webm", "short.mp4", "thirty.mp4")
REFUSED = ("cover.mp4", "truncated.mp4", "empty.mp4", "text.mp4")


# Sources as planning probes them: (file, the kind the endpoint expects).
SOURCES = [(name, "video") for name in (*CORPUS, "rot180.mkv", "clip.ts", "phone.mov")] + [
    ("still.png", "image"),
    ("still.jpg", "image"),
]
BAD_SOURCES = [(name, "video") for name in (*REFUSED, "still.png")] + [("plain.mp4", "image"), ("text.mp4", "image")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, media) -> Path:  # `media`: ffmpeg is there (else skipped, or failed on CI)
    return tmp_path_factory.mktemp("avprobe")


@pytest.mark.parametrize("name", CORPUS)
def test_the_in_process_probe_gives_ffprobes_figures(corpus, name):
    path = _make(corpus, name)
    ours = avprobe.probe_video(path, "fp")
    ref = probe.probe(str(path), "video", "fp", timeout_s=30)
    assert (ours.duration, ours.width, ours.height, ours.codec) == (ref.duration, ref.width, ref.height, ref.codec)
    assert (ours.rotation, ours.display_size, ours.has_audio) == (ref.rotation, ref.display_size, ref.has_audio)
    assert ours.fps == ref.fps and ours.size_bytes == ref.size_bytes == path.stat().st_size


def test_the_corpus_is_as_awkward_as_it_says(corpus):
    facts = {n: avprobe.probe_video(_make(corpus, n), "fp") for n in ("rotated.mp4", "short.mp4", "thirty.mp4")}
    assert facts["rotated.mp4"].rotation in (90, 270) and facts["rotated.mp4"].display_size == (36, 64)
    phone = probe.probe_source(str(_make(corpus, "phone.mov")), "video", "fp", timeout_s=30)
    assert phone.codec == "hevc" and phone.rotation in (90, 270) and phone.display_size == (36, 64)
    assert facts["short.mp4"].duration == probe.probe(str(corpus / "short.mp4"), "video", "fp", timeout_s=30).duration
    assert facts["thirty.mp4"].duration == 30
    assert avprobe.probe_video(_make(corpus, "vp8.webm"), "fp").codec == "vp8"


@pytest.mark.parametrize("name", REFUSED)
def test_a_file_ffprobe_refuses_is_refused_in_process_too(corpus, name):
    path = _make(corpus, name)
    with pytest.raises(ProbeError):
        probe.probe(str(path), "video", "fp", timeout_s=30)
    with pytest.raises(ProbeError) as info:
        avprobe.probe_video(path, "fp")
    assert str(path) in info.value.message and "Traceback" not in info.value.message


@pytest.mark.parametrize(("name", "kind"), SOURCES)
def test_a_source_probed_in_process_gives_ffprobes_probe_result(corpus, tmp_path, name, kind):
    src = str(_make(corpus, name))
    ref = probe.probe(src, kind, "fp", timeout_s=30)
    no_ffprobe = str(tmp_path / "no-ffprobe")  # the in-process answer itself: any fallback would fail
    assert probe.probe_source(src, kind, "fp", timeout_s=30, cmd=no_ffprobe) == ref
    assert probe.probe_source(src, kind, "fp", timeout_s=30) == ref


@pytest.mark.parametrize(("name", "kind"), BAD_SOURCES)
def test_a_source_refused_in_process_gets_ffprobes_error(corpus, tmp_path, name, kind):
    src = str(_make(corpus, name))
    with pytest.raises(ProbeError) as ref:
        probe.probe(src, kind, "fp", timeout_s=30)
    with pytest.raises(ProbeError) as ours:
        probe.probe_source(src, kind, "fp", timeout_s=30)
    assert (type(ours.value), ours.value.message, ours.value.hint) == (
        type(ref.value),
        ref.value.message,
        ref.value.hint,
    )
    with pytest.raises(ToolMissingError):  # it was ffprobe's call, not a look-alike message
        probe.probe_source(src, kind, "fp", timeout_s=30, cmd=str(tmp_path / "no-ffprobe"))


@pytest.mark.parametrize("name", [n for n, _ in SOURCES])
def test_the_in_process_reading_prints_what_ffprobe_prints(corpus, name):
    src = str(_make(corpus, name))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", src], capture_output=True, check=True
    ).stdout
    ref, ours = json.loads(out), avprobe.ffprobe_info(src)
    assert {k: ref["format"].get(k) for k in ours["format"]} == ours["format"]
    assert len(ours["streams"]) == len(ref["streams"])
    for theirs, mine in zip(ref["streams"], ours["streams"], strict=True):
        for key in ("codec_type", "codec_name", "width", "height", "avg_frame_rate", "duration", "nb_frames"):
            assert mine.get(key, theirs.get(key)) == theirs.get(key), (key, mine, theirs)
        assert (mine.get("duration"), mine.get("nb_frames")) == (theirs.get("duration"), theirs.get("nb_frames"))
        assert mine["disposition"]["attached_pic"] == theirs["disposition"]["attached_pic"]
        rotation = next((d["rotation"] for d in theirs.get("side_data_list", ()) if "rotation" in d), 0)
        assert next((d["rotation"] for d in mine.get("side_data_list", ())), 0) == rotation
