"""Bad start-up input fails in one clear line, before Ray starts: s3:// paths without AWS credentials,
unreachable or malformed --address values, cache roots that are not usable; and the node-local mirror
paths of an s3:// cache are recognised exactly (no other path is ever fetched)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from candle_ray import runtime
from candle_ray.cli import main
from candle_ray.data import remote_cache
from candle_ray.data.cache import Cache
from candle_ray.errors import UsageError
from candle_ray.storage import Storage, credentials_source
from tests.conftest import ROOT, free_port

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No AWS credentials anywhere: none in the environment, empty shared files, no instance metadata."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(tmp_path / "node"))
    return tmp_path / "aws"


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Fails the command if it reaches runtime.connect (the one place Ray starts): in the full suite a
    session cluster is already up, so `ray.is_initialized()` alone cannot tell."""
    from candle_ray import runtime

    def refuse(*args, **kwargs):
        raise AssertionError("the command started Ray before checking its S3 paths")

    monkeypatch.setattr(runtime, "connect", refuse)


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("args", [
    ["data", "ls", "--cache-dir", "s3://bucket/cache"],
    ["data", "prepare", str(TINY), "--smoke", "--cache-dir", "s3://bucket/cache"],
    ["train", str(TINY), "--smoke", "--cache-dir", "s3://bucket/cache"],
    ["tune", str(TINY), "--smoke", "--storage", "s3://bucket/sweeps"],
    ["tune", str(TINY), "--smoke", "--cache-dir", "s3://bucket/cache"],
])
def test_s3_without_credentials_names_the_variables(args, no_credentials, tmp_path, monkeypatch, ray_must_not_start):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert "no AWS credentials found" in line and "AWS_ACCESS_KEY_ID" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "s3://bucket/" in line


def test_credentials_from_profiles(no_credentials, monkeypatch):
    assert credentials_source() is None
    no_credentials.mkdir()
    (no_credentials / "credentials").write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    assert credentials_source() == "profile default"
    monkeypatch.setenv("AWS_PROFILE", "team")  # a profile that neither file defines
    assert credentials_source() is None
    (no_credentials / "config").write_text("[profile team]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n")
    assert credentials_source() == "profile team"
    (no_credentials / "config").write_text("not an ini file [[[")  # unreadable files are skipped, not fatal
    assert credentials_source() is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    assert credentials_source() is None  # half a key pair is no credential
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    assert credentials_source() == "environment"


def test_storage_paths_that_name_no_bucket():
    with pytest.raises(UsageError, match="names no bucket"):
        Storage.parse("s3://", option="--cache-dir")
    with pytest.raises(UsageError, match="only local paths and s3://"):
        Storage.parse("gs://bucket/x")
    with pytest.raises(UsageError, match="s3://bucket/prefix"):
        Cache("gs://bucket/cache")
    with pytest.raises(UsageError, match="write s3://bucket/prefix"):
        remote_cache.open_cache("s3:/bucket/cache")  # a Path() mangled URI


@pytest.mark.parametrize("address, message", [
    ("foo:bar", "is not host:port"),
    ("ray://:10001", "is not host:port"),
    ("host:", "is not host:port"),
])
def test_malformed_address(address, message):
    with pytest.raises(UsageError, match=message):
        runtime.probe(address)


def test_address_probe_leaves_ray_alone_for_auto_and_none(monkeypatch):
    """Ray resolves these itself (start a local cluster, read RAY_ADDRESS, add its default port): the probe
    must not try a connection of its own, which would fail or wait for nothing."""
    import socket

    def no_connection(target, *args, **kwargs):
        raise AssertionError(f"probe tried to connect to {target}")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    for address in (None, "", "auto", "local", "headnode"):
        assert runtime.probe(address) is None
    with pytest.raises(AssertionError, match="127.0.0.1"):
        runtime.probe("127.0.0.1:6379")  # the guard above is live: a host:port is probed


def test_closed_address_fails_fast_with_the_fix():
    port = free_port()  # bound, then released: nothing listens there
    with pytest.raises(UsageError) as info:
        runtime.probe(f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(info.value) and "ray start --head" in str(info.value)
    with pytest.raises(UsageError, match="cannot reach a Ray cluster"):
        runtime.probe(f"ray://127.0.0.1:{port}")


def _ray_processes(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


def test_train_with_unreachable_address_exits_2_and_leaves_no_ray_processes(tmp_path):
    """The whole CLI in a subprocess, with its own RAY_TMPDIR: every Ray process it could start would
    carry that folder in its command line (session dir, sockets)."""
    ray_tmp = tmp_path / "rt"
    ray_tmp.mkdir()
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "CANDLE_RAY_CACHE": str(tmp_path / "cache"),
           "CANDLE_RAY_OUTPUT": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    before = _ray_processes(str(ray_tmp))
    done = subprocess.run([str(Path(sys.executable).parent / "candle-ray"), "train", str(TINY), "--smoke",
                           "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused); check --address / "
                      f"RAY_ADDRESS (`ray status` on the head node prints it), or start one there with "
                      f"`ray start --head --port {port}`"], done.stderr
    assert "Traceback" not in done.stderr
    assert before == [] and _ray_processes(str(ray_tmp)) == []
    assert not (ray_tmp / "ray").exists()  # ray.init never ran: no session folder either
    assert not (tmp_path / "mlflow.db").exists()  # nor was an MLflow run opened for it


# --------------------------------------------------------------------------- mirror paths of an s3 cache
def test_mirror_paths_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(tmp_path / "node"))
    manifest = b'{"x": 1}'
    path = remote_cache.mirror_path("s3://bucket/team/cache", "nt3-0123456789abcdef", manifest)
    assert path.parent == tmp_path / "node" / "s3-mirror" / "bucket" / "team" / "cache" / "datasets"
    assert remote_cache.parse_mirror_path(path) == ("s3://bucket/team/cache", "nt3-0123456789abcdef",
                                                    remote_cache.version(manifest))
    at_bucket_root = remote_cache.mirror_path("s3://bucket", "a-b", manifest)
    assert remote_cache.parse_mirror_path(at_bucket_root)[0] == "s3://bucket"


@pytest.mark.parametrize("path", [
    "/data/cache/datasets/nt3-0123456789abcdef",  # a local entry
    "/x/s3-mirror/bucket/datasets/nt3-0123456789abcdef",  # no version
    "/x/s3-mirror/bucket/datasets/nt3@0123",  # version too short
    "/x/s3-mirror/datasets/nt3@0123456789ab",  # no bucket
    "/x/other/bucket/datasets/nt3@0123456789ab",  # not under s3-mirror
    "/x/s3-mirror/bucket/tables/nt3@0123456789ab",  # not an entry folder
])
def test_other_paths_are_no_mirrors(path):
    assert remote_cache.parse_mirror_path(path) is None
    assert remote_cache.ensure_local(path) is False


def test_reading_a_mirror_manifest_never_fetches_it(tmp_path, monkeypatch):
    """A node without the copy of an S3 entry: reading the manifest only reads (no bucket is reached, no
    folder made); remote_cache.ensure_local is the one call that fetches."""
    from candle_ray.data.cache_format import read_manifest
    from candle_ray.errors import CacheError

    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(tmp_path / "node"))
    path = remote_cache.mirror_path("s3://no-such-bucket/cache", "nt3-0123456789abcdef", b'{"x": 1}')
    with pytest.raises(CacheError, match="does not exist or is incomplete"):
        read_manifest(path)
    assert not (tmp_path / "node").exists()


def test_a_missing_local_entry_still_fails_as_before(tmp_path):
    from candle_ray.data.cache_format import read_manifest
    from candle_ray.errors import CacheError

    with pytest.raises(CacheError, match="does not exist or is incomplete"):
        read_manifest(tmp_path / "datasets" / "nt3-0123456789abcdef")
