"""The architecture as a test: imports point one way, and a few modules own a concern alone."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "batch_runner"

# Lower number = lower layer. A module imports only from strictly lower layers, except that
# the db/, api/, emulator/ and cli/ packages' own modules may import each other.
LAYERS = {
    "errors": 0,
    "domain": 1,
    "timewindow": 1,  # --since/--until forms (ISO, 24h, yesterday), pure: now is passed
    "schema": 1,  # endpoint input fields and their checks, under the catalog that uses them
    "catalog": 2,
    "config": 2,
    "logs": 2,
    "yamlload": 2,
    "records": 2,  # rows as frozen records, built once in db/
    "atomic": 1,  # files written whole or not at all
    "jsontext": 1,  # JSON text piece by piece, as json.dumps(indent=2) writes the whole
    "avprobe": 2.5,  # in-process probing (PyAV), below probe.py that falls back to ffprobe
    "outpaths": 3.5,  # output paths from the manifest template: above sources, below manifest
    "budget": 2,  # pure rules over numbers; db/ asks them under the claim's lock, so it sits below db
    "storage": 2.5,  # object stores through fsspec: glob, fingerprint, presign, verified writes
    "sources": 3,  # manifest sources (globs, paths, URLs, rows files), below the manifest that reads them
    "manifest": 4,
    "pricing": 3,
    "probe": 3,
    "media": 3,
    "db": 3,
    "api": 3,
    "progress": 3,
    "notify": 3,  # webhook notifications: signed POSTs from a background thread
    "metrics": 4,  # Prometheus metrics: reporter counters and gauges read through db/
    "stages": 3,  # the pool's pipeline parts (bounded stage, look-ahead, wake-up signal): threads only
    "outcome": 4,
    "output": 4,
    "emulator": 4,
    "fal_prices": 4,
    "billing": 4.5,  # what an outcome is recorded as billed: above output and fal_prices, below worker
    "uploads": 4.5,  # fal's storage uploads, cached by content hash: below worker
    "worker": 5,
    "planner": 5,
    "pool": 6,
    "resolve": 6,
    "runner": 7,
    "reports": 7,
    "reconcile": 7,
    "price_sync": 7,
    "health": 7,  # is this machine ready: db, ffprobe, fal, leases
    "prune": 7,  # retention: old events and attempts out, daily rollups in
    "report_html": 8,
    "line_items": 8,  # report --items, streamed: built on reports
    "plaintable": 8,  # big unwrapped tables laid out as rich would, line by line (display)
    "display": 9,
    "cli": 10,
    "__main__": 11,
}
# The emulator is a separate app: besides its own package it may use only these.
EMULATOR_MAY_IMPORT = {"catalog", "pricing", "domain"}


def _modules():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = rel.parts
        if parts[-1] == "__init__" and len(parts) == 1:
            continue
        yield parts, ast.parse(path.read_text())


def _internal_imports(parts: tuple[str, ...], tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(parts[: -node.level]) if node.level <= len(parts) - 1 else []
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names] if not node.module else [None]
            for name in names:
                full = target + ([name] if name else [])
                yield full[0] if full else name


def test_imports_point_down_the_layers():
    for parts, tree in _modules():
        me = parts[0]
        for target in _internal_imports(parts, tree):
            if target == me and me in ("db", "emulator", "api", "cli", "config"):
                continue
            if me == "emulator":
                assert target in EMULATOR_MAY_IMPORT, f"{'/'.join(parts)} imports {target}"
            assert target in LAYERS, f"{'/'.join(parts)} imports unknown module {target}"
            assert LAYERS[target] < LAYERS[me], f"{'/'.join(parts)} (layer {LAYERS[me]}) imports {target}"


def test_nothing_but_the_cli_starts_the_emulator():
    for parts, tree in _modules():
        if parts[0] in ("cli", "emulator", "__main__"):
            continue
        assert "emulator" not in set(_internal_imports(parts, tree)), f"{'/'.join(parts)} imports the emulator"


def test_only_cli_imports_click_and_only_config_reads_the_environment():
    for parts, tree in _modules():
        src = ast.unparse(tree)
        name = "/".join(parts)
        imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
        }
        if parts[0] != "cli":
            assert "click" not in imports, f"{name} imports click"
        if parts[0] != "config":
            assert "os.environ" not in src and "getenv" not in src, f"{name} reads the environment"


def test_sql_lives_in_db():
    for parts, tree in _modules():
        if parts[0] == "db":
            continue
        imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        imports |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(i.startswith(("sqlalchemy", "alembic", "sqlite3", "psycopg")) for i in imports), "/".join(parts)


def test_every_module_opens_with_a_docstring():
    for parts, tree in _modules():
        assert ast.get_docstring(tree), f"{'/'.join(parts)} has no module docstring"
