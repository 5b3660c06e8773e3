"""The HTML report in a real headless browser (Debian's chromium): it loads without errors and
shows the figures, the charts and a contact sheet with every job, failures flagged."""

from __future__ import annotations

import re
import shutil
import subprocess

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.conftest import skip_or_fail
from tests.integration.run_helpers import make_bench

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        skip_or_fail("chromium is not installed (make test installs it as root)")
    return found


def test_html_report_loads_in_chromium_and_shows_the_figures(tmp_path, media, emulator_factory):
    browser = _chromium()
    bench = make_bench(tmp_path, media, emulator_factory(faults="refuse=1/1"), clips=2)
    bench.run()
    page = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli, ["report", "--format", "html", "-o", str(page)], env={"BATCH_RUNNER_DB": bench.db_url}
    )
    assert result.exit_code == 0, result.stderr
    proc = subprocess.run(
        [
            browser,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0 and 'data-ready="1"' in dom  # the page's script ran to the end
    assert re.search(r'<ul id="errors"></ul>', dom)  # no error was raised in the page
    assert "Uncaught" not in proc.stderr
    assert (
        'data-cards="4"' in dom and dom.count('class="card failed"') == 1 and dom.count('class="card succeeded"') == 3
    )
    assert "content_policy_violation" in dom  # the failure's reason is on its card
    assert "$0.90" in dom and "estimated $1.20" in dom  # billed (3 × $0.30) against the estimate
    assert dom.count("<svg") == 2 and dom.count('src="data:image/jpeg;base64,') >= 6
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # something was painted
