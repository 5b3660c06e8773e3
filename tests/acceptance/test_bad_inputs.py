"""A corpus of bad inputs, as new users write them: each exits with the README's code, one
`Error:` line per problem (naming the file and line or the field, with a hint), no traceback,
and nothing written to the job table or the output folder."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch_runner.cli import cli

T2V = "batch: b\nendpoint: ray-2/text-to-video\n"
R32T = "batch: b\nendpoint: ray-3.2/text-to-video\n"
I2V = "batch: b\nendpoint: ray-2/image-to-video\ndefaults: {prompt: hi}\n"
REF = "batch: b\nendpoint: ray-3.2/reframe\ndefaults:\n  prompt: hi\n  aspect_ratio: '9:16'\n"
ROWS_I2V = "batch: b\nendpoint: ray-2/image-to-video\nsources:\n  - rows: r.csv\n"
ROWS_REF = "batch: b\nendpoint: ray-3.2/reframe\nsources:\n  - rows: r.csv\n"
ROWS_T2V = "batch: b\nendpoint: ray-2/text-to-video\nsources:\n  - rows: r.jsonl\n"
OK_SRC = "sources:\n  - params: {prompt: a fox}\n"


@dataclass
class Case:
    manifest: str | bytes | None  # None: m.yaml is a folder
    code: int
    errors: int = 1  # `Error:` lines expected
    says: str = ""  # a phrase the first error line contains
    files: dict[str, str | bytes] = field(default_factory=dict)
    args: tuple[str, ...] = ("plan",)  # m.yaml is appended to plan/enqueue/run
    names: str = "m.yaml"  # what each error line names: the file (or the field / db path)


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return T2V + "\n".join(lines) + f"\nsources:\n  - params: {{prompt: *a{levels - 1}}}\n"


CASES: dict[str, Case] = {
    # --------------------------------------------------------------- the YAML itself
    "yaml_alias_bomb": Case(_bomb(8), 3, says="expands to more than"),
    "yaml_alias_bomb_small_file_9": Case(_bomb(9), 3, says="aliases"),
    "yaml_tab_indent": Case("batch: b\n\tendpoint: x\n", 3, says="not valid YAML"),
    "yaml_top_list": Case("- a\n- b\n", 3, says="got a list"),
    "yaml_top_scalar": Case("hello\n", 3, says="got a string"),
    "yaml_empty_file": Case("", 3, says="got nothing"),
    "yaml_only_comment": Case("# nothing yet\n", 3, says="YAML mapping"),
    "yaml_binary": Case(b"\xff\xfe\x00\x01garbage", 3, says="not UTF-8"),
    "yaml_latin1": Case(T2V.encode() + b"sources:\n  - params: {prompt: caf\xe9}\n", 3, says="not UTF-8"),
    "yaml_nul_byte": Case(T2V + "x: \x00\n", 3, says="not valid YAML"),
    "yaml_duplicate_key": Case(T2V + "batch: c\n" + OK_SRC, 3, says="appears twice"),
    "yaml_unclosed_quote": Case(T2V + 'defaults: {prompt: "abc}\n' + OK_SRC, 3, says="not valid YAML"),
    "yaml_two_documents": Case(T2V + OK_SRC + "---\nbatch: c\n", 3, says="not valid YAML"),
    "yaml_self_alias": Case(T2V + "x: &x [*x]\n" + OK_SRC, 3, says="refers to itself"),
    "yaml_over_1_mib": Case(T2V + "# " + "x" * (1024 * 1024) + "\n" + OK_SRC, 3, says="1 MiB"),
    "yaml_is_folder": Case(None, 3, says="is a folder"),
    "yaml_missing": Case("", 3, args=("plan", "nope.yaml"), says="file not found", names="nope.yaml"),
    "yaml_bad_indent": Case("batch: b\n endpoint: x\n", 3, says="not valid YAML"),
    # --------------------------------------------------------------- top-level fields
    "batch_missing": Case("endpoint: ray-2/text-to-video\n" + OK_SRC, 3, says="batch: is required"),
    "batch_null": Case("batch:\nendpoint: ray-2/text-to-video\n" + OK_SRC, 3, says="got nothing"),
    "batch_list": Case("batch: [a]\nendpoint: ray-2/text-to-video\n" + OK_SRC, 3, says="got a list"),
    "batch_bad_name": Case("batch: 'my batch!'\nendpoint: ray-2/text-to-video\n" + OK_SRC, 3, says="valid batch"),
    "batch_huge_name": Case(
        f"batch: {'x' * 5000}\nendpoint: ray-2/text-to-video\n" + OK_SRC,
        3,
        says="characters) is not a valid batch name",
    ),
    "endpoint_missing": Case("batch: b\n" + OK_SRC, 3, says="endpoint: is required"),
    "endpoint_unknown": Case("batch: b\nendpoint: ray-2/text2video\n" + OK_SRC, 3, says="did you mean"),
    "endpoint_int": Case("batch: b\nendpoint: 5\n" + OK_SRC, 3, says="got an integer"),
    "endpoint_huge": Case(f"batch: b\nendpoint: {'y' * 9000}\n" + OK_SRC, 3, says="characters)"),
    "unknown_top_key": Case(T2V + "sourcs: []\n", 3, errors=2, says="did you mean"),
    "three_top_typos": Case("batchh: b\nendpint: x\nsourcs: []\n", 3, errors=5, says="unknown key"),
    "defaults_list": Case(T2V + "defaults: [a]\n" + OK_SRC, 3, says="must be a mapping"),
    "matrix_scalar": Case(T2V + "matrix: {aspect_ratio: '9:16'}\n" + OK_SRC, 3, says="non-empty list"),
    "matrix_empty": Case(T2V + "matrix: {aspect_ratio: []}\n" + OK_SRC, 3, says="non-empty list"),
    "matrix_duplicate": Case(T2V + "matrix: {aspect_ratio: ['1:1', '1:1']}\n" + OK_SRC, 3, says="twice"),
    "matrix_and_defaults": Case(
        T2V + "defaults: {resolution: 720p}\nmatrix: {resolution: [540p]}\n" + OK_SRC, 3, says="both"
    ),
    "matrix_bad_enum": Case(T2V + "matrix: {aspect_ratio: ['9x16']}\n" + OK_SRC, 3, says="did you mean"),
    "tags_int": Case(T2V + "tags: 5\n" + OK_SRC, 3, says="list of strings"),
    "budget_string": Case(T2V + "budget: lots\n" + OK_SRC, 3, says="budget"),
    "budget_negative": Case(T2V + "budget: {max_usd: '-5'}\n" + OK_SRC, 3, says="positive USD"),
    "budget_unknown_key": Case(T2V + "budget: {max_usdd: '5'}\n" + OK_SRC, 3, says="did you mean"),
    "budget_text": Case(T2V + "budget: {max_usd: five}\n" + OK_SRC, 3, says="positive USD"),
    "overrides_list": Case(T2V + "overrides: {'a*': [1]}\n" + OK_SRC, 3, says="override"),
    "output_placeholder": Case(T2V + "output: '{stme}.mp4'\n" + OK_SRC, 3, says="did you mean"),
    "output_escapes": Case(T2V + "output: '../../{stem}.mp4'\n" + OK_SRC, 3, says="escapes"),
    "output_bad_braces": Case(T2V + "output: '{stem.mp4'\n" + OK_SRC, 3, says="bad template"),
    "output_empty": Case(T2V + "output: ''\n" + OK_SRC, 3, says="non-empty string"),
    "output_root_is_file": Case(T2V + "output_root: f\n" + OK_SRC, 3, files={"f": "x"}, says="is a file"),
    "output_root_under_file": Case(T2V + "output_root: f/out\n" + OK_SRC, 3, files={"f": "x"}, says="is a file"),
    "output_root_int": Case(T2V + "output_root: 5\n" + OK_SRC, 3, says="non-empty string"),
    "output_same_path": Case(
        T2V + "output: '{batch}/x.mp4'\nsources:\n  - params: {prompt: a}\n  - params: {prompt: b}\n",
        3,
        says="two jobs",
    ),
    "many_problems_at_once": Case(
        "batch: 'bad name'\nendpoint: ray-2/text-to-video\ntags: 5\nbudget: {max_usd: x}\n" + OK_SRC, 3, errors=3
    ),
    # --------------------------------------------------------------- input fields
    "prompt_empty": Case(T2V + "sources:\n  - params: {prompt: ''}\n", 3, says="must not be empty"),
    "prompt_blank": Case(T2V + "sources:\n  - params: {prompt: '   '}\n", 3, says="must not be empty"),
    "prompt_nul": Case(T2V + 'sources:\n  - params: {prompt: "a\\0b"}\n', 3, says="NUL"),
    "prompt_list": Case(T2V + "sources:\n  - params: {prompt: [a, b]}\n", 3, says="got a list"),
    "prompt_int": Case(T2V + "sources:\n  - params: {prompt: 5}\n", 3, says="got an integer"),
    "prompt_null": Case(T2V + "sources:\n  - params: {prompt: null}\n", 3, says="field required"),
    "prompt_missing": Case(T2V + "sources:\n  - params: {aspect_ratio: '16:9'}\n", 3, says="field required"),
    "prompt_too_long": Case(R32T + f"sources:\n  - params: {{prompt: {'w' * 7000}}}\n", 3, says="at most 6000"),
    "enum_bad": Case(T2V + "defaults: {aspect_ratio: '9x16'}\n" + OK_SRC, 3, says="did you mean"),
    "enum_huge": Case(
        T2V + f"defaults: {{aspect_ratio: {'z' * 3000}}}\n" + OK_SRC, 3, says="characters) is not one of"
    ),
    "enum_int": Case(T2V + "defaults: {resolution: 720}\n" + OK_SRC, 3, says="got an integer"),
    "bool_string": Case(T2V + "defaults: {loop: maybe}\n" + OK_SRC, 3, says="boolean"),
    "unknown_field": Case(T2V + "defaults: {promt: x}\n" + OK_SRC, 3, says="did you mean"),
    "three_field_typos": Case(
        T2V + "defaults:\n  promt: a\n  aspect_ration: '9:16'\n  resolutin: 720p\n" + OK_SRC, 3, errors=3
    ),
    "field_typos_over_sources": Case(
        T2V + "sources:\n  - params: {prompt: a, loop: x}\n  - params: {prompt: b, resolution: 9}\n", 3, errors=2
    ),
    "field_in_matrix_and_params": Case(
        T2V + "matrix: {resolution: [540p]}\nsources:\n  - params: {prompt: a, resolution: 720p}\n", 3, says="swept"
    ),
    "params_not_mapping": Case(T2V + "sources:\n  - params: [a]\n", 3, says="mapping"),
    # --------------------------------------------------------------- sources
    "sources_missing": Case(T2V, 3, says="sources: is required"),
    "sources_empty": Case(T2V + "sources: []\n", 3, says="non-empty list"),
    "sources_mapping": Case(T2V + "sources: {glob: x}\n", 3, says="non-empty list"),
    "source_int": Case(REF + "sources:\n  - 5\n", 3, says="path, glob, URL"),
    "source_two_kinds": Case(REF + "sources:\n  - {glob: '*.mp4', path: c.mp4}\n", 3, says="use one per source"),
    "source_unknown_key": Case(REF + "sources:\n  - {pth: c.mp4}\n", 3, says="did you mean"),
    "source_url_ftp": Case(REF + "sources:\n  - {url: 'ftp://x/y.mp4'}\n", 3, says="http"),
    "source_empty_path": Case(REF + "sources:\n  - {path: ''}\n", 3, says="non-empty"),
    "source_name_on_glob": Case(
        REF + "sources:\n  - {glob: '*.mp4', name: x}\n", 3, files={"d.mp4": "c5"}, says="single"
    ),
    "source_t2v_path": Case(T2V + "sources:\n  - c.mp4\n", 3, says="takes no media"),
    "source_missing_file": Case(REF + "sources:\n  - path: nope.mp4\n", 4, says="file not found"),
    "source_is_folder": Case(REF + "sources:\n  - path: sub\n", 4, files={"sub/x": "a"}, says="is a folder"),
    "source_empty_file": Case(REF + "sources:\n  - path: e.mp4\n", 4, files={"e.mp4": ""}, says="0 bytes"),
    "source_text_file": Case(REF + "sources:\n  - path: e.mp4\n", 4, files={"e.mp4": "hi\n" * 99}, says="not a video"),
    "source_truncated": Case(REF + "sources:\n  - path: t.mp4\n", 4, files={"t.mp4": "truncated"}, says="corrupt"),
    "source_video_as_image": Case(I2V + "sources:\n  - c.mp4\n", 4, says="is a video, not an image"),
    "source_image_as_video": Case(REF + "sources:\n  - s.png\n", 4, says="is an image, not a video"),
    "sources_two_bad": Case(
        REF + "sources:\n  - path: e.mp4\n  - path: nope.mp4\n", 4, errors=2, files={"e.mp4": ""}, says="0 bytes"
    ),
    "source_too_long": Case(REF + "sources:\n  - path: long.mp4\n", 4, files={"long.mp4": "c30_04"}, says="at most 30"),
    # --------------------------------------------------------------- rows files
    "rows_missing": Case(ROWS_I2V, 3, says="not found", names="m.yaml"),
    "rows_folder": Case(ROWS_I2V, 3, files={"r.csv/x": "a"}, says="is a folder", names="m.yaml"),
    "rows_wrong_suffix": Case(
        ROWS_I2V.replace("r.csv", "r.txt"), 3, files={"r.txt": "a"}, says=".csv or .jsonl", names="m.yaml"
    ),
    "csv_no_header": Case(ROWS_I2V, 3, files={"r.csv": ""}, says="no header", names="r.csv"),
    "csv_duplicate_header": Case(
        ROWS_I2V, 3, files={"r.csv": "source,prompt,prompt\ns.png,a,b\n"}, says="twice", names="r.csv"
    ),
    "csv_ragged": Case(ROWS_I2V, 3, files={"r.csv": "source,prompt\ns.png,a,b\n"}, says="more cells", names="r.csv"),
    "csv_latin1": Case(
        ROWS_I2V, 3, files={"r.csv": b"source,prompt\ns.png,caf\xe9\n"}, says="not UTF-8", names="r.csv"
    ),
    "csv_no_source": Case(ROWS_REF, 3, files={"r.csv": "source,prompt\n,a\n"}, says='no "source"', names="r.csv"),
    "csv_bad_bool": Case(
        ROWS_I2V, 3, files={"r.csv": "source,prompt,loop\ns.png,a,perhaps\n"}, says="boolean", names="r.csv"
    ),
    "csv_bad_enum": Case(
        ROWS_I2V, 3, files={"r.csv": "source,prompt,resolution\ns.png,a,4k\n"}, says="not one of", names="r.csv"
    ),
    "csv_three_bad_rows": Case(
        ROWS_REF,
        3,
        errors=3,
        files={"r.csv": "source,prompt,aspect_ratio\n,a,1:1\nc.mp4,b,x\nc.mp4,c,y\n"},
        names="r.csv",
    ),
    "csv_bom_bad_field": Case(
        ROWS_I2V, 3, errors=2, files={"r.csv": "\ufeffsource,promt\ns.png,a\n"}, says="did you mean", names="r.csv"
    ),
    "csv_nul": Case(ROWS_I2V, 3, files={"r.csv": "source,prompt\ns.png,a\x00b\n"}, says="NUL", names="r.csv"),
    "jsonl_bad_line": Case(
        ROWS_T2V, 3, files={"r.jsonl": '{"prompt": "a"}\n{bad\n'}, says="not valid JSON", names="r.jsonl"
    ),
    "jsonl_array_line": Case(ROWS_T2V, 3, files={"r.jsonl": "[1, 2]\n"}, says="JSON object", names="r.jsonl"),
    "jsonl_prompt_int": Case(ROWS_T2V, 3, files={"r.jsonl": '{"prompt": 5}\n'}, says="got an integer", names="r.jsonl"),
    "jsonl_binary": Case(ROWS_T2V, 3, files={"r.jsonl": b"\xff\xfe{}\n"}, says="not UTF-8", names="r.jsonl"),
    "jsonl_source_int": Case(
        "batch: b\nendpoint: ray-2/image-to-video\nsources:\n  - rows: r.jsonl\n",
        3,
        files={"r.jsonl": '{"source": 5, "prompt": "a"}\n'},
        says="path or URL",
        names="r.jsonl",
    ),
    # --------------------------------------------------------------- 0 jobs with --require-jobs
    "zero_jobs_glob_plan": Case(
        REF + "sources:\n  - glob: 'none/*.mp4'\n",
        4,
        args=("plan", "--require-jobs"),
        says="0 jobs",
        names="--require-jobs",
    ),
    "zero_jobs_glob_enqueue": Case(
        REF + "sources:\n  - glob: 'none/*.mp4'\n",
        4,
        args=("enqueue", "--require-jobs"),
        says="0 jobs",
        names="--require-jobs",
    ),
    "zero_jobs_rows_plan": Case(
        ROWS_I2V,
        4,
        files={"r.csv": "source,prompt\n"},
        args=("plan", "--require-jobs"),
        says="0 jobs",
        names="--require-jobs",
    ),
    # --------------------------------------------------------------- databases
    "db_folder": Case("", 6, args=("--db", "sub", "status"), files={"sub/x": "a"}, says="folder", names="sub"),
    "db_text_file": Case(
        "", 6, args=("--db", "t.txt", "status"), files={"t.txt": "hello"}, says="not a SQLite", names="t.txt"
    ),
    "db_empty_file": Case("", 6, args=("--db", "e.db", "status"), files={"e.db": ""}, says="empty file", names="e.db"),
    "db_mysql": Case("", 6, args=("--db", "mysql://u@h/db", "status"), says="not supported", names="mysql"),
    "db_missing_folder": Case("", 6, args=("--db", "nowhere/x/y.db", "status"), says="does not exist", names="y.db"),
    "db_missing_file": Case("", 6, args=("--db", "y.db", "show", "1"), says="does not exist", names="y.db"),
    "db_bad_url": Case("", 6, args=("--db", "postgresql://u@h:notaport/db", "status"), says="not valid", names="--db"),
    "db_for_plan": Case(
        T2V + OK_SRC, 6, args=("--db", "t.txt", "plan"), files={"t.txt": "x"}, says="not a SQLite", names="t.txt"
    ),
}

MEDIA = {"c5", "c30_04", "truncated", "image"}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("db") / "jobs.db"
    result = CliRunner().invoke(cli, ["--db", str(db), "db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0
    return db


def _prepare(case: Case, d: Path, media: dict[str, Path]) -> list[str]:
    shutil.copy(media["c5"], d / "c.mp4")
    shutil.copy(media["image"], d / "s.png")
    for name, content in case.files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content in MEDIA:
            shutil.copy(media[content], p)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    m = d / "m.yaml"
    if case.manifest is None:
        m.mkdir()
    elif isinstance(case.manifest, bytes):
        m.write_bytes(case.manifest)
    else:
        m.write_text(case.manifest, encoding="utf-8")
    args = list(case.args)
    if args[-1] in ("plan", "enqueue") or (args[0] in ("plan", "enqueue") and "nope.yaml" not in args):
        args.append(str(m))
    return args


def _jobs_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def _check_errors(case: Case, code: int, stdout: str, stderr: str, expected_code: int) -> None:
    assert code == expected_code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == case.errors, stderr
    for line in lines:
        assert len(line) < 700, "an error line quotes an unbounded value"
        assert line.endswith(")") and " (" in line, f"no hint: {line}"
        assert case.names in line or ": " in line.split(" (")[0], line
    assert case.names in lines[0]
    assert case.says in lines[0], lines[0]
    if case.args[0] in ("plan", "enqueue") or case.args[:2] == ("--db",):
        assert not stdout.strip() or code == 4, stdout  # a plan table may precede exit 4 (README)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_one_error_line_per_problem(
    name: str, tmp_path: Path, media: dict[str, Path], template_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    work = tmp_path / "w"
    work.mkdir()
    db = tmp_path / "jobs.db"
    shutil.copy(template_db, db)
    monkeypatch.setenv("BATCH_RUNNER_DB", str(db))
    monkeypatch.setenv("FAL_KEY", "fal-test-key-0123456789abcdef")
    monkeypatch.chdir(work)
    args = _prepare(case, work, media)
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    _check_errors(case, result.exit_code, result.stdout, result.stderr, case.code)
    assert _jobs_in(db) == 0
    assert not (work / "out").exists() or not any((work / "out").iterdir())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80


@pytest.mark.parametrize("name", ["yaml_alias_bomb", "csv_three_bad_rows", "db_mysql", "yaml_binary"])
def test_bad_input_through_the_real_entry_point_has_no_traceback(
    name: str, tmp_path: Path, media: dict[str, Path], template_db: Path
) -> None:
    case = CASES[name]
    db = tmp_path / "jobs.db"
    shutil.copy(template_db, db)
    args = _prepare(case, tmp_path, media)
    env = {"PATH": "/usr/bin:/bin", "BATCH_RUNNER_DB": str(db), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "batch_runner", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    _check_errors(case, proc.returncode, proc.stdout, proc.stderr, case.code)
    assert _jobs_in(db) == 0
