"""Outputs are checked in-process through libavformat (PyAV); ffprobe stays the reference. On a
corpus of awkward media both must give the same figures, or both refuse the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from batch_runner import avprobe, probe
from batch_runner.errors import ProbeError

SMALL = "testsrc2=size=64x36:rate=25"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def _make(folder: Path, name: str) -> Path:
    out = folder / name
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
    elif name == "empty.mp4":
        out.write_bytes(b"")
    elif name == "text.mp4":
        out.write_text("not a video at all\n")
    return out


CORPUS = ("plain.mp4", "rotated.mp4", "vfr.mp4", "long-audio.mp4", "vp8.webm", "short.mp4", "thirty.mp4")
REFUSED = ("cover.mp4", "truncated.mp4", "empty.mp4", "text.mp4")


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
