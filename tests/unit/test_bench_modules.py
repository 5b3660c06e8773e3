"""The benchmarks are not run by the suite (they are timed), but each must still import: a
rename in the package would otherwise surface only at `make bench`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("path", sorted(BENCH.glob("bench_*.py")), ids=lambda p: p.name)
def test_each_benchmark_imports(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_check_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # runs its imports; main() only runs as a script
    finally:
        del sys.modules[spec.name]
    assert callable(module.main)
