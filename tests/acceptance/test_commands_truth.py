"""Commands that say the truth: help texts, JSON shapes, samples, the codes of missing things."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from batch_runner.cli import cli


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_samples_makes_every_clip_and_still_distinct_past_one_round_of_patterns(tmp_path: Path):
    code, out, err = _invoke("samples", str(tmp_path), "--clips", "6", "--images", "6", "--duration", "0.2")
    assert code == 0, err
    made = [Path(line) for line in out.splitlines()]
    assert [p.name for p in made] == [f"clip0{i}.mp4" for i in range(1, 7)] + [f"still0{i}.png" for i in range(1, 7)]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in made}
    assert len(digests) == 12
