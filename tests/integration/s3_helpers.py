"""Real object-store servers for the object-store tests, each a subprocess on 127.0.0.1 on a port of
its own choosing, reached over real HTTP by fsspec, ffprobe and the emulator alike: moto's
standalone S3 server (`moto[server]`, dev extras); s3rver (tests/s3server, npm), which checks
signatures and presigned URLs' expiry as S3 does; Azurite (same package), Azure Blob Storage's
emulator, for adlfs. Nothing is mocked in process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from s3fs import S3FileSystem

from tests.conftest import REPO, skip_or_fail

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    url: str
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))  # the keys it takes

    def client(self):  # boto3's client, to arrange buckets and look at objects from outside
        return boto3.client("s3", endpoint_url=self.url, **_creds(self.env))

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, path: Path) -> None:
        self.client().upload_file(str(path), bucket, key)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        got = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in got.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _creds(env: dict[str, str] = ENV) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto_server on 127.0.0.1, port 0: it prints the port it took. It checks no credentials."""
    yield from _moto(tmp_path_factory, {})


@dataclass
class AuthS3:
    """moto with IAM enforced: `admin` may do anything; `keys` (a user's) may use only `open_bucket`."""

    server: S3Server
    keys: dict[str, str]
    open_bucket: str = "open-bkt"
    denied_bucket: str = "denied-bkt"


@pytest.fixture(scope="session", name="s3_auth")
def s3_auth_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    """A second moto server that enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT: the first three calls
    make an admin; every later call must be signed by a known key and allowed by its policy)."""
    for server in _moto(tmp_path_factory, {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}):
        iam = boto3.client("iam", endpoint_url=server.url, **_creds())
        admin = _user(iam, "admin", "*", "*")
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1", **admin)
        auth = AuthS3(server, {})
        auth.keys = _user(
            iam, "nightly", "s3:*", [f"arn:aws:s3:::{auth.open_bucket}", f"arn:aws:s3:::{auth.open_bucket}/*"]
        )
        s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", **admin)
        for bucket in (auth.open_bucket, auth.denied_bucket):
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="nightly/clip0.mp4", Body=b"not really a video")
        yield auth


def _user(iam, name: str, action: str, resource) -> dict[str, str]:
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]}
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


#: s3rver's one key pair (lib/models/account.js DUMMY_ACCOUNT); any other secret is SignatureDoesNotMatch.
S3RVER_ENV = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_DEFAULT_REGION": "us-east-1"}
S3RVER = REPO / "tests" / "s3server"


@pytest.fixture(scope="session", name="s3rver_server")
def s3rver_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """s3rver on 127.0.0.1, port 0 (tests/s3server/server.js prints the port it took). Unlike moto it
    checks every SigV2/SigV4 signature against its key pair and refuses a presigned URL past its
    expiry with 403 AccessDenied "Request has expired" (s3rver lib/signature/v2.js, v4.js)."""
    if shutil.which("node") is None:
        skip_or_fail("node is not installed")
    if not (S3RVER / "node_modules" / "@20minutes" / "s3rver" / "package.json").exists():
        skip_or_fail("s3rver is not installed: run `make test` or `npm ci --prefix tests/s3server`")
    folder = tmp_path_factory.mktemp("s3rver")
    cmd = ["node", str(S3RVER / "server.js"), str(folder / "data"), "0"]
    for server in _serve(cmd, folder, r"listening on (\S+)", {}):
        server.env = dict(S3RVER_ENV)
        yield server


def _moto(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[S3Server]:
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe), "-H", "127.0.0.1", "-p", "0"]
    yield from _serve(cmd, tmp_path_factory.mktemp("moto"), r"Running on (http://127\.0\.0\.1:\d+)", env)


def _serve(cmd: list[str], folder: Path, ready: str, env: dict[str, str]) -> Iterator[S3Server]:
    """Start a server that prints its URL when ready (matched by `ready`); stop it afterwards."""
    log = folder / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        url = None
        for _ in range(300):
            found = re.search(ready, log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if url is None:
            pytest.fail(f"{Path(cmd[0]).name} did not start: {log.read_text(errors='replace')[-500:]}")
        yield S3Server(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(name="s3")
def s3_fixture(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with the environment a user of an S3-compatible store sets (endpoint and keys)."""
    return use_store(s3_server, monkeypatch)


@pytest.fixture(name="s3rver")
def s3rver_fixture(s3rver_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """s3rver, with its endpoint and keys in the environment."""
    return use_store(s3rver_server, monkeypatch)


def use_store(server: S3Server, monkeypatch: pytest.MonkeyPatch, **env: str) -> S3Server:
    """Point this process's S3 environment at a server, with its keys (or those given in env)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    for k, v in {**server.env, **env}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    S3FileSystem.clear_instance_cache()  # fsspec keeps one per process: none made with other keys
    return server


def s3_env(server: S3Server) -> dict[str, str]:
    """The environment for a subprocess (a `work` process on another 'machine')."""
    return {**os.environ, **server.env, "AWS_ENDPOINT_URL": server.url}


#: Azurite's one account and its published key (Azurite README, "Default storage account").
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class AzureStore:
    """Azurite's blob service; `connection` is what a user sets in AZURE_STORAGE_CONNECTION_STRING."""

    url: str

    @property
    def connection(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.url}/{AZURITE_ACCOUNT};"
        )

    def client(self):  # azure-storage-blob's client, to arrange containers and look at blobs from outside
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection)

    def container(self, name: str) -> str:
        self.client().create_container(name)
        return name

    def put(self, container: str, name: str, path: Path) -> None:
        with path.open("rb") as fh:
            self.client().get_blob_client(container, name).upload_blob(fh)

    def keys(self, container: str) -> list[str]:
        return sorted(b.name for b in self.client().get_container_client(container).list_blobs())

    def get(self, container: str, name: str) -> bytes:
        return self.client().get_blob_client(container, name).download_blob().readall()


@pytest.fixture(scope="session", name="azurite_server")
def azurite_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureStore]:
    """Azurite's blob service on 127.0.0.1, port 0 (it prints the port it took), telemetry off."""
    exe = S3RVER / "node_modules" / ".bin" / "azurite-blob"
    if shutil.which("node") is None:
        skip_or_fail("node is not installed")
    if not exe.exists():
        skip_or_fail("Azurite is not installed: run `make test` or `npm ci --prefix tests/s3server`")
    folder = tmp_path_factory.mktemp("azurite")
    cmd = [str(exe), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(folder / "data")]
    cmd += ["--disableTelemetry", "--skipApiVersionCheck"]  # no call home; adlfs's SDK may be newer than Azurite
    for server in _serve(cmd, folder, r"successfully listens on (http://127\.0\.0\.1:\d+)", {}):
        yield AzureStore(server.url)


@pytest.fixture(name="azurite")
def azurite_fixture(azurite_server: AzureStore, monkeypatch: pytest.MonkeyPatch) -> AzureStore:
    """Azurite, with the connection string in the environment (adlfs reads it from there)."""
    from adlfs import AzureBlobFileSystem

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection)
    AzureBlobFileSystem.clear_instance_cache()
    return azurite_server
