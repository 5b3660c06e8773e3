"""Sources and outputs in an object store: moto's S3 server and s3rver (which checks signatures and
presigned expiry) on 127.0.0.1 (s3_helpers.py), the emulator, ffprobe and s3fs all over real HTTP.
Each fault ends with a clear error and no second bill."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import fsspec
import httpx
import pytest
from click.testing import CliRunner
from fsspec.registry import _registry as fsspec_registry
from fsspec.spec import AbstractFileSystem
from s3fs import S3FileSystem

from batch_runner import runner, storage
from batch_runner.cli import cli
from batch_runner.domain import JobState
from batch_runner.errors import ManifestError
from batch_runner.manifest import load_manifest

from .run_helpers import make_bench
from .s3_helpers import (  # noqa: F401 - the s3, s3_server, s3_auth, s3rver, azurite fixtures (and servers)
    azurite_fixture,
    azurite_server_fixture,
    s3_auth_fixture,
    s3_env,
    s3_fixture,
    s3_server_fixture,
    s3rver_fixture,
    s3rver_server_fixture,
    use_store,
)

EXE = Path(sys.executable).parent / "batch-runner"

STORE_MANIFEST = """batch: {{batch}}
endpoint: ray-3.2/reframe
defaults:
  prompt: extend the scene
  resolution: 540p
matrix:
  aspect_ratio: ["9:16", "1:1"]
sources:
  - glob: "s3://{src}/nightly/*.mp4"
output_root: s3://{out}/deliver
output: "{{{{batch}}}}/{{{{stem}}}}_{{{{aspect_ratio}}}}.mp4"
"""


def _bench(tmp_path, media, emulator, s3, *, out="out", clips=2, create_out=True, **kw):
    """Buckets of this test's own (the S3 server lives for the session): src-<id> and <out>-<id>."""
    tag = uuid.uuid4().hex[:8]
    src, out = f"src-{tag}", f"{out}-{tag}"
    text = STORE_MANIFEST.format(src=src, out=out)
    bench = make_bench(tmp_path, media, emulator, clips=clips, manifest_text=text, **kw)
    s3.bucket(src)
    if create_out:
        s3.bucket(out)
    for clip in sorted((tmp_path / "media").glob("*.mp4")):
        s3.put(src, f"nightly/{clip.name}", clip)
    bench.src, bench.out = src, out  # type: ignore[attr-defined]
    return bench


def ledger(bench) -> int:
    return int(bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts")[0][0])


def emulator_bill(bench) -> int:
    return sum(int(Decimal(r["cost_usd"]) * 1_000_000) for r in bench.emulator_log() if r.get("cost_usd"))


def test_a_nightly_reframe_of_an_s3_folder_lands_verified_in_an_s3_output_root(tmp_path, media, emulator_factory, s3):
    bench = _bench(tmp_path, media, emulator_factory(), s3)
    summary = bench.run()
    assert summary.counts == {"succeeded": 4}, summary.failed
    keys = s3.keys(bench.out)
    want = [f"deliver/b/clip{i}_{a}.mp4{j}" for i in (0, 1) for a in ("1x1", "9x16") for j in ("", ".json")]
    assert keys == sorted(want)  # no temporary key left behind
    side = json.loads(s3.get(bench.out, "deliver/b/clip0_9x16.mp4.json"))
    assert side["source"] == f"s3://{bench.src}/nightly/clip0.mp4"
    assert side["output"] == f"s3://{bench.out}/deliver/b/clip0_9x16.mp4"
    assert side["source_fingerprint"].startswith(f"store:s3://{bench.src}/nightly/clip0.mp4:")
    body = s3.get(bench.out, "deliver/b/clip0_9x16.mp4")
    assert len(body) == side["size_bytes"] and body[4:8] == b"ftyp"
    # fal fetched presigned URLs from the store: nothing was uploaded to fal's storage
    assert bench.sql("select count(*) from uploads") == [(0,)]
    health = httpx.get(f"{bench.emulator.url}/_emulator/health", timeout=30).json()
    assert health["http_requests"].get("download", 0) == 4  # our four output downloads, no source read
    # the probe cache keys objects by ETag + size, as it keys files by size + mtime
    fps = [r[0] for r in bench.sql("select fingerprint from probes")]
    assert len(fps) == 2 and all(fp.startswith(f"store:s3://{bench.src}/nightly/clip") for fp in fps), fps
    assert ledger(bench) == emulator_bill(bench) == 4 * 300_000


def test_enqueue_twice_adds_nothing_and_a_replaced_object_shows_as_changed(tmp_path, media, emulator_factory, s3):
    bench = _bench(tmp_path, media, emulator_factory(), s3)
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}

    def br(*args: str):
        return CliRunner().invoke(cli, list(args), env=env)

    first = br("enqueue", str(bench.manifest), "--json")
    assert first.exit_code == 0, first.output
    again = br("plan", str(bench.manifest), "--diff", "--json")
    assert again.exit_code == 0, again.output
    diff = json.loads(again.stdout)["diff"]
    assert len(diff["unchanged"]) == 4 and not diff["new"] and not diff["changed"], diff
    s3.put(bench.src, "nightly/clip0.mp4", tmp_path / "media" / "clip1.mp4")  # new content: new ETag
    changed = json.loads(br("plan", str(bench.manifest), "--diff", "--json").stdout)["diff"]
    assert len(changed["changed"]) == 2 and len(changed["unchanged"]) == 2, changed


def test_a_missing_object_is_an_invalid_source_at_plan_and_a_failed_job_unpaid_at_run(
    tmp_path, media, emulator_factory, s3
):
    bench = _bench(tmp_path, media, emulator_factory(), s3, clips=1)
    bench.manifest.write_text(
        bench.manifest.read_text().replace('glob: "s3://', 'path: "s3://').replace("*.mp4", "gone.mp4")
    )
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}
    result = CliRunner().invoke(cli, ["plan", str(bench.manifest)], env=env)
    assert result.exit_code == 4, result.output
    assert f"s3://{bench.src}/nightly/gone.mp4" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.output
    # enqueued while it was there, deleted before the run: the worker fails it before paying anything
    bench.manifest.write_text(bench.manifest.read_text().replace("nightly/gone.mp4", "nightly/clip0.mp4"))
    assert CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env).exit_code == 0
    s3.client().delete_object(Bucket=bench.src, Key="nightly/clip0.mp4")
    summary = bench.run(manifest=False, batches=["b"])
    assert summary.counts == {"failed": 2}
    assert all("not found" in f["error"] for f in summary.failed), summary.failed
    assert ledger(bench) == emulator_bill(bench) == 0 and not [r for r in bench.emulator_log() if r["request_id"]]


def test_a_bucket_that_does_not_exist_is_a_manifest_error_before_anything_is_paid(
    tmp_path, media, emulator_factory, s3
):
    # moto's server enforces no credentials or bucket policies unless IAM auth is switched on, so
    # the denied store here is the one it does enforce: a bucket that is not there (NoSuchBucket).
    bench = _bench(tmp_path, media, emulator_factory(), s3, out="no-such-bucket", create_out=False)
    assert bench.out.startswith("no-such-bucket")

    with pytest.raises(ManifestError) as err:
        load_manifest(bench.manifest)
    assert "output_root" in str(err.value.lines()) and "no-such-bucket" in err.value.message
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}
    result = CliRunner().invoke(cli, ["run", str(bench.manifest)], env=env)
    assert result.exit_code == 3 and "Error:" in result.stderr and "Traceback" not in result.output
    assert not [r for r in bench.emulator_log() if r["request_id"]]


def test_an_output_bucket_removed_mid_run_leaves_jobs_undelivered_and_retry_fetches_them_free(
    tmp_path, media, emulator_factory, s3
):
    bench = _bench(tmp_path, media, emulator_factory(), s3, clips=1, out="gone-out")
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}
    assert CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env).exit_code == 0
    s3.client().delete_bucket(Bucket=bench.out)
    first = bench.run(manifest=False, batches=["b"])
    assert first.counts == {"failed": 2}, first.failed
    assert all("without paying again" in f["error"] for f in first.failed), first.failed
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000
    s3.bucket(bench.out)
    jobs = runner.select_jobs(bench.repo, ["b"], [JobState.FAILED], [])
    runner.retry_jobs(bench.repo, jobs, [JobState.FAILED])
    again = bench.run(manifest=False, batches=["b"])
    assert again.counts == {"succeeded": 2} and again.billed_micro_usd == 0
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000
    assert len([k for k in s3.keys(bench.out) if k.endswith(".mp4")]) == 2


def test_a_presigned_url_fal_cannot_fetch_fails_the_job_as_fal_does_and_unpaid(tmp_path, media, emulator_factory, s3):
    # A URL can go dead while fal holds it in two ways: it expires (the s3rver test below) or its
    # object is deleted, as here (404; fal answers both with a file_download_error).
    emu = emulator_factory(speed=20.0)  # the request waits long enough for the object to go
    bench = _bench(tmp_path, media, emu, s3, clips=1)
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}
    assert CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env).exit_code == 0

    def remove_when_submitted() -> None:
        for _ in range(400):
            if [r for r in bench.emulator_log() if r["request_id"]]:
                s3.client().delete_object(Bucket=bench.src, Key="nightly/clip0.mp4")
                return
            threading.Event().wait(0.02)

    t = threading.Thread(target=remove_when_submitted)
    t.start()
    summary = bench.run(manifest=False, batches=["b"])
    t.join()
    assert summary.counts == {"rejected": 2}, summary.failed
    assert all("file_download_error" in f["error"] or "download" in f["error"] for f in summary.failed), summary.failed
    assert ledger(bench) == emulator_bill(bench) == 0


def test_a_rows_file_in_the_store_names_objects_beside_it(tmp_path, media, emulator_factory, s3):
    bench = _bench(tmp_path, media, emulator_factory(), s3, clips=1)
    rows = tmp_path / "list.csv"
    rows.write_text("source,prompt\nclip0.mp4,a calm sea\ns3://elsewhere/x.mp4,a storm\n")
    s3.put(bench.src, "nightly/list.csv", rows)
    text = bench.manifest.read_text().replace('glob: "s3://', 'rows: "s3://').replace("*.mp4", "list.csv")
    bench.manifest.write_text(text)
    m = load_manifest(bench.manifest)
    assert [j.source for j in m.jobs][::2] == [f"s3://{bench.src}/nightly/clip0.mp4", "s3://elsewhere/x.mp4"]
    assert m.output_root == f"s3://{bench.out}/deliver"
    assert m.jobs[0].output == f"s3://{bench.out}/deliver/b/clip0_9x16.mp4"
    assert m.jobs[0].params["prompt"] == "a calm sea"


def test_an_output_key_that_leaves_the_store_root_is_a_manifest_error(tmp_path, s3):
    out = s3.bucket(f"keys-{uuid.uuid4().hex[:8]}")  # load_manifest needs the bucket; the source need not exist
    text = STORE_MANIFEST.format(src="any", out=out).format(batch="b").replace("glob:", "path:")
    text = text.replace("*.mp4", "a.mp4")
    manifest = tmp_path / "m.yaml"
    for template in ("../{stem}.mp4", "/{stem}.mp4", "{batch}/../../{stem}.mp4"):
        manifest.write_text(text.replace('"{batch}/{stem}_{aspect_ratio}.mp4"', json.dumps(template)))
        with pytest.raises(ManifestError) as err:
            load_manifest(manifest)
        assert "escapes the output root" in err.value.message and err.value.field == "output", template
    manifest.write_text(text)
    assert load_manifest(manifest).jobs[0].output == f"s3://{out}/deliver/b/a_9x16.mp4"  # a key inside is fine


def test_an_output_that_fails_its_check_never_appears_at_its_key_and_is_kept_aside(
    tmp_path, media, emulator_factory, s3
):
    bench = _bench(tmp_path, media, emulator_factory(output_skew_px=(200, 0)), s3, clips=1)
    summary = bench.run()
    assert summary.counts == {"failed": 2}
    assert all("output check failed: asked for" in f["error"] for f in summary.failed), summary.failed
    assert all(f"kept at s3://{bench.out}/deliver/b/clip0_" in f["error"] for f in summary.failed)
    assert s3.keys(bench.out) == ["deliver/b/clip0_1x1.rejected.mp4", "deliver/b/clip0_9x16.rejected.mp4"]
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000  # fal billed them: recorded once


@pytest.mark.postgres
def test_two_work_processes_on_postgresql_share_no_disk_and_pay_each_job_once(
    tmp_path, media, emulator_factory, s3, pg_url
):
    (tmp_path / "planner").mkdir()
    bench = _bench(tmp_path / "planner", media, emulator_factory(), s3, clips=3, db_url=pg_url)
    env = {**s3_env(s3), "BATCH_RUNNER_DB": pg_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url, "FAL_KEY": "k"}
    env.pop("CI", None)
    done = CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env)
    assert done.exit_code == 0, done.output
    shutil.rmtree(tmp_path / "planner")  # the manifest and its media are gone: workers need only the store
    procs = []
    for n in (1, 2):  # two "machines": each its own working and temporary folder
        home = tmp_path / f"machine{n}"
        (home / "tmp").mkdir(parents=True)
        procs.append(
            subprocess.Popen(
                [str(EXE), "work", "--batch", "b", "--until-done", "--concurrency", "2"],
                cwd=home,
                env={**env, "TMPDIR": str(home / "tmp")},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-1500:] for o in outs]
    assert bench.sql("select state, count(*) from jobs group by state") == [("succeeded", 6)]
    accepted = Counter(r["input_sha256"] for r in bench.emulator_log() if r["request_id"])
    assert len(accepted) == 6 and set(accepted.values()) == {1}  # no input reached fal twice
    assert ledger(bench) == emulator_bill(bench) == 6 * 300_000
    assert len([k for k in s3.keys(bench.out) if k.endswith(".mp4")]) == 6
    assert not [p for p in (tmp_path / "machine1").rglob("*") if p.is_file()]  # nothing left on a machine


def test_a_bucket_the_keys_may_not_read_or_write_is_refused_at_plan_with_nothing_sent(
    tmp_path, media, emulator_factory, s3_auth, monkeypatch
):
    # moto enforcing IAM: the user's policy allows one bucket; the other answers 403 Access Denied.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_auth.server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth.keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth.keys["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    S3FileSystem.clear_instance_cache()  # a file system made with the other server's keys
    ok, denied = s3_auth.open_bucket, s3_auth.denied_bucket
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url}
    cases = {  # (sources, output_root) → exit code, words in the error
        "glob": (f'glob: "s3://{denied}/nightly/*.mp4"', f"s3://{ok}/out", 3, "access denied"),
        "path": (f'path: "s3://{denied}/nightly/clip0.mp4"', f"s3://{ok}/out", 4, "access denied"),
        "output": (f'path: "s3://{ok}/nightly/clip0.mp4"', f"s3://{denied}/out", 3, "not visible"),
    }
    for name, (source, root, code, words) in cases.items():
        bench.manifest.write_text(
            f'batch: b\nendpoint: ray-3.2/reframe\ndefaults: {{prompt: p, aspect_ratio: "9:16"}}\n'
            f"sources:\n  - {source}\noutput_root: {root}\n"
        )
        result = CliRunner().invoke(cli, ["plan", str(bench.manifest)], env=env)
        assert (result.exit_code, name) == (code, name), result.output
        assert words in result.stderr and denied in result.stderr and "Traceback" not in result.output, result.stderr
        assert s3_auth.keys["aws_secret_access_key"] not in result.output
    assert not [r for r in bench.emulator_log() if r["request_id"]]


def test_a_presigned_url_that_expires_while_the_job_waits_at_fal_fails_it_unpaid_and_retry_presigns_afresh(
    tmp_path, media, emulator_factory, s3rver
):
    # s3rver refuses a presigned URL past its expiry as S3 does (403 AccessDenied "Request has
    # expired"); fal answers an input it cannot download with a 422 file_download_error. The URL
    # lives 1 s (the real setting), the request waits 3 s in fal's queue before fal fetches it.
    emu = emulator_factory(queue_delay_s=3000.0)  # fal seconds at the factory's speed 1000: 3 s
    bench = _bench(tmp_path, media, emu, s3rver, clips=1)
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "k"}
    short = {**env, "BATCH_RUNNER_STORE_URL_LIFETIME_S": "1"}
    witness = storage.presign(f"s3://{bench.src}/nightly/clip0.mp4", 1)  # signed as the worker signs
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in witness and "X-Amz-Expires=1&" in witness  # SigV4, 1 s
    first = CliRunner().invoke(cli, ["run", str(bench.manifest), "--json"], env=short)
    assert first.exit_code == 1, first.output  # jobs rejected: exit 1, as documented
    refused = httpx.get(witness, timeout=30)  # what fal got: the store's own refusal of an expired URL
    assert refused.status_code == 403 and "Request has expired" in refused.text, refused.text
    got = json.loads(first.stdout)
    assert got["jobs"] == {"rejected": 2} and got["billed_cost_usd"] == "0.00", got
    assert all(f["error"] == "file_download_error: Failed to download video_url: HTTP 403" for f in got["failed"])
    assert "X-Amz-" not in first.output and "Signature=" not in first.output  # no signed URL in a message
    assert ledger(bench) == emulator_bill(bench) == 0  # fal bills no input it could not fetch
    sent = [r for r in bench.emulator_log() if r["request_id"]]
    assert len(sent) == 2  # fal took both requests and fetched each URL after it had expired
    again = CliRunner().invoke(cli, ["retry", "--batch", "b", "--state", "rejected"], env=env)
    assert again.exit_code == 0, again.output
    summary = bench.run(manifest=False, batches=["b"])  # the default lifetime (7 days) outlasts the wait
    assert summary.counts == {"succeeded": 2}, summary.failed
    resent = [r for r in bench.emulator_log() if r["request_id"]][2:]
    assert len(resent) == 2 and not {r["input_sha256"] for r in resent} & {r["input_sha256"] for r in sent}
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000  # paid once, for the delivered outputs
    assert len([k for k in s3rver.keys(bench.out) if k.endswith(".mp4")]) == 2


def test_keys_the_store_refuses_during_a_run_fail_every_job_clearly_with_nothing_paid_or_written(
    tmp_path, media, emulator_factory, s3rver, monkeypatch
):
    # Planned with good keys; the worker's keys are wrong (rotated, or another machine's): s3rver
    # checks each signature and answers 403 SignatureDoesNotMatch, as S3 does.
    bench = _bench(tmp_path, media, emulator_factory(), s3rver, clips=1)
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url, "FAL_KEY": "k"}
    assert CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env).exit_code == 0
    use_store(s3rver, monkeypatch, AWS_SECRET_ACCESS_KEY="not-the-secret")
    result = CliRunner().invoke(cli, ["work", "--batch", "b", "--until-done", "--json"], env=env)
    assert result.exit_code == 1, result.output  # jobs failed: exit 1, as documented
    failed = json.loads(result.stdout)["failed"]
    assert len(failed) == 2 and all("access denied" in f["error"] for f in failed), failed
    assert all(f"s3://{bench.src}/nightly/clip0.mp4" in f["error"] for f in failed), failed
    assert "not-the-secret" not in result.output and "Traceback" not in result.output
    assert not [r for r in bench.emulator_log() if r["request_id"]]  # nothing reached fal
    assert ledger(bench) == emulator_bill(bench) == 0
    assert s3rver.keys(bench.out) == []  # nothing partial in the output store


class _NoPresignStore(S3FileSystem):
    """An object store whose fsspec backend cannot presign, as fsspec's base class has it
    (AbstractFileSystem.sign raises NotImplementedError; ossfs's OSS backend is one such): s3fs on
    the `oss` scheme with sign() left at that default. No OSS server installs here, so the bytes
    live on s3rver; listing, reading and writing are s3fs's own, over real HTTP."""

    protocol = ("oss",)
    sign = AbstractFileSystem.sign


def test_a_store_that_cannot_presign_is_probed_from_a_copy_and_reaches_fal_through_fals_upload(
    tmp_path, media, emulator_factory, s3rver, monkeypatch
):
    # fsspec.register_implementation("oss", …, clobber=True) writes this registry; monkeypatch undoes it
    monkeypatch.setitem(fsspec_registry, "oss", _NoPresignStore)
    with pytest.raises(NotImplementedError):
        fsspec.filesystem("oss").sign("any/key")
    bench = _bench(tmp_path, media, emulator_factory(), s3rver, clips=1)
    bench.manifest.write_text(bench.manifest.read_text().replace(f"s3://{bench.src}/", f"oss://{bench.src}/"))
    summary = bench.run()
    assert summary.counts == {"succeeded": 2}, summary.failed
    fps = [r[0] for r in bench.sql("select fingerprint from probes")]
    assert fps and all(fp.startswith(f"store:oss://{bench.src}/nightly/clip0.mp4:") for fp in fps), fps
    # one copy uploaded to fal's storage (the emulator's CDN), whose URL both jobs handed fal
    body = s3rver.get(bench.src, "nightly/clip0.mp4")
    uploads = bench.sql("select sha256, size_bytes, url from uploads")
    assert [u[:2] for u in uploads] == [(hashlib.sha256(body).hexdigest(), len(body))]
    assert uploads[0][2].startswith(bench.emulator.url)
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000
    assert len([k for k in s3rver.keys(bench.out) if k.endswith(".mp4")]) == 2


def test_a_nightly_reframe_of_an_azure_blob_folder_lands_verified_in_an_azure_output_root(
    tmp_path, media, emulator_factory, azurite
):
    # adlfs on Azurite: fal reads each source through a SAS URL (Azure's presigned URL), outputs are
    # written through temporary blobs; the connection string comes only from the environment.
    tag = uuid.uuid4().hex[:8]
    src, out = azurite.container(f"src-{tag}"), azurite.container(f"out-{tag}")
    text = STORE_MANIFEST.format(src=src, out=out).replace("s3://", "az://")
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1, manifest_text=text)
    azurite.put(src, "nightly/clip0.mp4", tmp_path / "media" / "clip0.mp4")
    summary = bench.run()
    assert summary.counts == {"succeeded": 2}, summary.failed
    want = [f"deliver/b/clip0_{a}.mp4{j}" for a in ("1x1", "9x16") for j in ("", ".json")]
    assert azurite.keys(out) == sorted(want)  # no temporary blob left behind
    side = json.loads(azurite.get(out, "deliver/b/clip0_9x16.mp4.json"))
    assert (
        side["source"] == f"az://{src}/nightly/clip0.mp4" and side["output"] == f"az://{out}/deliver/b/clip0_9x16.mp4"
    )
    assert len(azurite.get(out, "deliver/b/clip0_9x16.mp4")) == side["size_bytes"]
    assert bench.sql("select count(*) from uploads") == [(0,)]  # fal fetched SAS URLs: nothing uploaded
    fps = [r[0] for r in bench.sql("select fingerprint from probes")]
    assert len(fps) == 1 and fps[0].startswith(f"store:az://{src}/nightly/clip0.mp4:"), fps
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000
