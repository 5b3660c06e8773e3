"""The HTML report in a real headless browser (Debian's chromium): it loads without errors and
shows the figures, the charts and a contact sheet with every job, failures flagged."""

from __future__ import annotations

import html
import re
import shutil
import subprocess

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.conftest import skip_or_fail
from tests.integration.run_helpers import make_bench
from tests.integration.test_chargeback import _two_projects

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
    assert dom.count("<svg") == 3 and dom.count('="data:image/jpeg;base64,') >= 6  # img src and video poster
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


# Headless Chromium will not make a window narrower than 500 px, so the phone width is a
# 390 px iframe in a wrapper page (file pages may read each other with --allow-file-access-from-files).
PHONE_FRAME = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="{name}" style="width:{width}px;height:2400px;border:0"></iframe>
<script>
document.getElementById("f").addEventListener("load", function () {{
  var inner = this.contentDocument.body;
  document.body.innerHTML += '<pre id="inner"></pre>';
  document.getElementById("inner").textContent = inner.outerHTML;
}});
</script></body></html>"""


def _page_at(page, width: int):
    """The page itself at desktop width, or the wrapper that shows it `width` px wide."""
    if width >= 500:
        return page
    frame = page.with_name(f"{page.stem}-{width}.html")
    frame.write_text(PHONE_FRAME.format(name=page.name, width=width))
    return frame


def _dom(browser: str, page, profile, width: int) -> str:
    """The page's DOM after its script ran, as laid out `width` px wide."""
    shown = _page_at(page, width)
    proc = subprocess.run(
        [
            browser,
            *FLAGS,
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            f"--window-size={max(width, 500)},900",
            "--dump-dom",
            shown.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout if shown == page else html.unescape(proc.stdout)
    assert proc.returncode == 0 and 'data-ready="1"' in dom and '<ul id="errors"></ul>' in dom
    return dom


def _screenshot(browser: str, page, shot, profile, width: int) -> None:
    subprocess.run(
        [
            browser,
            *FLAGS,
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            f"--window-size={max(width, 500)},2400",
            # let the phone-width iframe load and paint before the shot: without it a loaded
            # machine sometimes captured the frame blank
            "--virtual-time-budget=10000",
            f"--screenshot={shot}",
            _page_at(page, width).as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


def test_html_report_charts_chargeback_and_cards_at_desktop_and_phone_widths(tmp_path, media, emulator_factory):
    browser = _chromium()
    bench, billed = _two_projects(tmp_path, media, emulator_factory)
    by_endpoint = {k.rsplit("/", 1)[-1]: sum(v.values()) for k, v in billed.items()}
    page = tmp_path / "reports" / "chargeback.html"
    result = CliRunner().invoke(
        cli,
        ["report", "--group-by", "project", "--format", "html", "-o", str(page)],
        env={"BATCH_RUNNER_DB": bench.db_url},
    )
    assert result.exit_code == 0, result.stderr
    for width in (1280, 390):
        dom = _dom(browser, page, tmp_path / f"profile{width}", width)
        scroll = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
        window = int(re.search(r'data-window-width="(\d+)"', dom).group(1))
        assert window == width and scroll <= window, (width, scroll)  # no sideways scrolling
        _screenshot(browser, page, tmp_path / f"report-{width}.png", tmp_path / f"shot{width}", width)
    charts = re.findall(r"<svg.*?</svg>", dom, flags=re.S)
    assert len(charts) == 3
    for svg in charts:  # two axes, each with its title, and tick labels with units
        assert svg.count('class="axis"') == 2 and svg.count('class="axis-title"') == 2
        assert re.search(r'class="tick"[^>]*>\$0\.00<', svg) and "USD billed" in svg
    day, endpoint, project = charts
    assert "day (UTC" in day
    total = by_endpoint["reframe"] + by_endpoint["text-to-video"]
    assert f"<b>${total:.2f}</b>" in dom  # the headline is the emulators' bill
    for name, usd in (("promo", by_endpoint["reframe"]), ("docs", by_endpoint["text-to-video"])):
        assert f"<title>{name}: ${usd:.2f}</title>" in project
    for (name,) in bench.sql("select distinct endpoint from jobs"):  # names in full, never cut from the left
        assert f'class="name" x="28" y="{31 + 40 * sorted(billed).index(name)}">{name}</text>' in endpoint
    title = re.search(r"<h1>(.*?)</h1>", dom).group(1)
    assert "batches b, b2" in title and "projects docs, promo" in title and re.search(r"\d{4}-\d{2}-\d{2}", title)
    escaped = "A quiet harbour &lt;at&gt; dawn &amp; mist"
    assert dom.count("data-prompt") == 1 and escaped in dom  # the text-to-video card shows its prompt
    videos = re.findall(r'<video class="play"[^>]*src="([^"]+)"', dom)
    assert len(videos) == 3 and all((page.parent / v).resolve().is_file() for v in videos)
    assert re.search(r'<details id="runs"><summary>2 run\(s\)', dom)
