"""The data cache on S3 (a real moto server on 127.0.0.1): prepare uploads an entry (files, then the
manifest), ls and verify read the bucket, verify catches a corrupted object, nodes without a copy fetch
a verified one with remote_cache.ensure_local (once per node, whatever the number of concurrent
readers), and a run trains on the node-local copy. (The sweep that keeps its cache, state and
checkpoints in one bucket is in test_s3_storage.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT
from tests.integration import test_s3_storage

s3_endpoint = test_s3_storage.s3_endpoint  # the moto server fixture (one server for this module)

pytestmark = pytest.mark.integration

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"
BUCKET = "cache"


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def s3(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def keys(endpoint, prefix):
    pages = s3(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture
def s3_cache(s3_endpoint, workdir, monkeypatch):
    """CANDLE_RAY_CACHE on a fresh prefix of the bucket; this 'node' keeps its copies under workdir/node-a."""
    client = s3(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-a"))
    prefix = f"t-{workdir.name[-24:]}".replace("_", "-").lower()
    monkeypatch.setenv("CANDLE_RAY_CACHE", f"s3://{BUCKET}/{prefix}")
    return prefix


def _ready_entry(output: str) -> tuple[str, Path]:
    """(s3 uri, node-local copy) from `data prepare`'s last line."""
    line = [ln for ln in output.splitlines() if ln.startswith("ready: ")][-1]
    uri = line.split()[1]
    local = Path(line.split("node-local copy ")[1].split(")")[0])
    return uri, local


_READ = """
import json, sys
from candle_ray.data import remote_cache
from candle_ray.data.feed import make_feed
remote_cache.ensure_local(sys.argv[1])
feed = make_feed(sys.argv[1], "train", 8, shuffle=False)
print(json.dumps({"batches": len(feed), "first": float(next(feed.epoch(0))[0][0, 0])}))
"""


def _read_in_processes(path: Path, n: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", _READ, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=os.environ.copy()) for _ in range(n)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_prepare_ls_verify_and_fetch_on_another_node(s3_cache, s3_endpoint, workdir, monkeypatch):
    empty = cli("data", "ls")
    assert empty.exit_code == 0 and f"no entries in s3://{BUCKET}/{s3_cache}" in empty.output, empty.output

    prepared = cli("data", "prepare", TINY, "--smoke")
    assert prepared.exit_code == 0, prepared.output
    uri, local = _ready_entry(prepared.output)
    key = uri.rsplit("/", 1)[1]
    assert uri == f"s3://{BUCKET}/{s3_cache}/datasets/{key}" and key.startswith("nt3-smoke-")
    assert keys(s3_endpoint, f"{s3_cache}/datasets/") == {
        f"{s3_cache}/datasets/{key}/{name}" for name in ("manifest.json", "train.arrow", "val.arrow", "scaler.json")}
    assert local.is_relative_to(workdir / "node-a" / "s3-mirror") and (local / "manifest.json").is_file()
    assert not (workdir / "cache").exists()  # nothing went to a local cache root

    again = cli("data", "prepare", TINY, "--smoke")  # idempotent: found in the bucket, nothing rebuilt
    assert again.exit_code == 0 and "already prepared" in again.output and "uploaded" not in again.output

    listed = cli("data", "ls")
    assert listed.exit_code == 0 and "nt3-smoke (synthetic)" in listed.output and key.split("-")[-1] in listed.output

    # Another node: no copy, no staging; verify hashes the objects in the bucket without fetching a copy.
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-b"))
    verified = cli("data", "verify")
    assert verified.exit_code == 0 and "1 entry verified" in verified.output, verified.output
    one = cli("data", "verify", TINY, "--smoke")
    assert one.exit_code == 0 and "1 entry verified" in one.output, one.output
    assert not (workdir / "node-b" / "s3-mirror").exists()

    # A worker on a node without the copy: three concurrent readers, one verified download, no leftovers.
    fresh = workdir / "node-b" / local.relative_to(workdir / "node-a")
    results = _read_in_processes(fresh, 3)
    assert results[0]["batches"] == 12 and all(r == results[0] for r in results)  # 96 rows / 8
    assert sorted(p.name for p in fresh.parent.iterdir()) == sorted([fresh.name, f".{fresh.name}.lock"])
    assert {p.name for p in fresh.iterdir()} == {"manifest.json", "train.arrow", "val.arrow", "scaler.json"}
    for name in ("train.arrow", "val.arrow"):
        assert (fresh / name).read_bytes() == (local / name).read_bytes()

    # Removed on the node that prepared it: gone from the bucket, its staging and its copy; node b's copy stays.
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-a"))
    staged = next((workdir / "node-a" / "s3-staging").rglob(f"datasets/{key}"))
    removed = cli("data", "rm", "nt3-smoke")
    assert removed.exit_code == 0 and f"removed {key} (" in removed.output, removed.output
    assert keys(s3_endpoint, f"{s3_cache}/datasets/") <= {f"{s3_cache}/datasets/"}  # Arrow keeps the parent's marker
    assert not staged.exists() and not local.exists() and (fresh / "manifest.json").is_file()
    assert f"no entries in s3://{BUCKET}/{s3_cache}" in cli("data", "ls").output


def test_corrupt_or_incomplete_entries_are_refused(s3_cache, s3_endpoint, workdir, monkeypatch):
    from candle_ray.data.remote_cache import ensure_local
    from candle_ray.errors import CacheError

    prepared = cli("data", "prepare", TINY, "--smoke")
    assert prepared.exit_code == 0, prepared.output
    uri, local = _ready_entry(prepared.output)
    base = f"{s3_cache}/datasets/{uri.rsplit('/', 1)[1]}"

    # One flipped byte in the bucket (same size): verify names the object; a fresh node refuses to use it.
    client = s3(s3_endpoint)
    body = bytearray(client.get_object(Bucket=BUCKET, Key=f"{base}/val.arrow")["Body"].read())
    body[-100] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=f"{base}/val.arrow", Body=bytes(body))
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-b"))
    bad = cli("data", "verify")
    assert bad.exit_code == 1, bad.output
    assert f"error: cache entry {uri} is corrupt: val.arrow has sha256" in bad.output
    assert "candle-ray data prepare" in bad.output and "--force" in bad.output
    fresh = workdir / "node-b" / local.relative_to(workdir / "node-a")
    with pytest.raises(CacheError, match="is corrupt: val.arrow has sha256"):
        ensure_local(fresh)
    assert not fresh.exists() and [p.name for p in fresh.parent.iterdir()] == [f".{fresh.name}.lock"]

    # --force rebuilds: the old version disappears first, then files, then the manifest; a run that
    # started on the old version is refused rather than fed the new bytes.
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-a"))
    rebuilt = cli("data", "prepare", TINY, "--smoke", "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    _, new_local = _ready_entry(rebuilt.output)
    assert new_local != local  # a new manifest, a new version
    assert cli("data", "verify").exit_code == 0
    with pytest.raises(CacheError, match="changed in the bucket since this run started"):
        ensure_local(fresh)

    # An upload that never reached its manifest is no entry at all.
    client.delete_object(Bucket=BUCKET, Key=f"{base}/manifest.json")
    listed = cli("data", "ls")
    assert listed.exit_code == 0 and "no entries in" in listed.output, listed.output
    missing = cli("data", "verify", TINY, "--smoke")
    assert missing.exit_code == 1 and "no cache entry for nt3-smoke" in missing.output


def test_missing_bucket_names_it_before_ray_starts(s3_endpoint, workdir, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node"))
    for args in (["data", "ls", "--cache-dir", "s3://no-such-bucket/cache"],
                 ["train", TINY, "--smoke", "--cache-dir", "s3://no-such-bucket/cache"],
                 ["tune", TINY, "--smoke", "--storage", "s3://no-such-bucket/sweeps"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "bucket 'no-such-bucket' does not exist" in errors[0], result.output
        assert f"aws s3 mb s3://no-such-bucket --endpoint-url {s3_endpoint}" in errors[0]
    assert not (workdir / "node" / "s3-mirror").exists()


def test_training_reads_the_node_local_copy(ray_cluster, s3_cache, s3_endpoint, workdir):
    import ray

    # A driver of its own that joins the running cluster with --address (probed, then ray.init; the job's
    # runtime_env forwards AWS_ENDPOINT_URL to the workers).
    done = subprocess.run([str(Path(sys.executable).parent / "candle-ray"), "train", str(TINY), "--smoke", "--set",
                           "epochs=2", "--run-name", "on-s3", "--address", ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uploaded nt3-smoke" in done.stdout
    job = json.loads((workdir / "runs" / "tiny_nt3" / "on-s3" / "config.json").read_text())
    entry = Path(job["entry"])
    assert entry.is_relative_to(workdir / "node-a" / "s3-mirror") and (entry / "manifest.json").is_file()
    assert any(k.endswith("/manifest.json") for k in keys(s3_endpoint, f"{s3_cache}/datasets/"))

    # A Ray worker on a node that has no copy yet fetches it before it reads, as a trial does (the cluster's
    # workers get the endpoint the way an existing cluster's would: through the job's runtime_env).
    elsewhere = workdir / "node-b" / entry.relative_to(workdir / "node-a")

    @ray.remote(num_cpus=0)
    def read(path):
        from candle_ray.data import remote_cache
        from candle_ray.data.feed import make_feed

        remote_cache.ensure_local(path)
        return len(make_feed(path, "train", 8, shuffle=False)), os.getpid()

    batches, pid = ray.get(read.options(runtime_env={"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint}}).remote(str(elsewhere)))
    assert batches == 12 and pid != os.getpid()
    assert (elsewhere / "manifest.json").read_bytes() == (entry / "manifest.json").read_bytes()


def test_joined_entry_on_s3(s3_cache, s3_endpoint, workdir, monkeypatch):
    """A joined entry (feature tables + row tables, here P1B3's smoke data) goes up and comes back whole."""
    from candle_ray.data.feed import make_feed
    from candle_ray.data.remote_cache import ensure_local

    prepared = cli("data", "prepare", ROOT / "experiments" / "p1b3.py", "--smoke")
    assert prepared.exit_code == 0, prepared.output
    uri, local = _ready_entry(prepared.output)
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["kind"] == "joined"
    names = {info["file"] for info in [*manifest["tables"].values(), *manifest["splits"].values()]}
    assert {k.rsplit("/", 1)[1] for k in keys(s3_endpoint, f"{s3_cache}/datasets/")} == names | {"manifest.json"}

    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-b"))
    assert cli("data", "verify").exit_code == 0
    fresh = workdir / "node-b" / local.relative_to(workdir / "node-a")
    assert ensure_local(fresh) is True
    feed = make_feed(fresh, "train", 32, shuffle=False)
    assert type(feed).__name__ == "JoinedFeed" and len(feed) == -(-manifest["splits"]["train"]["rows"] // 32)
    assert {p.name for p in fresh.iterdir()} == names | {"manifest.json"}
    _predict_on_a_third_node(workdir, monkeypatch, fresh, manifest)


def _predict_on_a_third_node(workdir, monkeypatch, fresh, manifest):
    """A model trained on node b's copy predicts rows named by ids on node c, which fetches its own copy."""
    import shutil

    import pandas as pd

    from candle_ray.data import joined_cache
    from candle_ray.data.cache_format import Entry
    from candle_ray.experiment import load_experiment
    from candle_ray.job import make_job
    from candle_ray.loop import World, train_epochs

    exp = load_experiment(ROOT / "experiments" / "p1b3.py")
    config = exp.resolve_config(smoke=True, sets=["epochs=1"])
    job = make_job(exp, config, Entry(path=fresh, manifest=manifest), run_dir=str(workdir / "run"))
    list(train_epochs(job, World()))
    rows, ids = joined_cache.open_rows(fresh, "val"), joined_cache.open_table_ids(fresh)
    pd.DataFrame({"cell": [ids["cell.expression"][i] for i in rows["cell"]],
                  "drug": [ids["drug.descriptors"][i] for i in rows["drug"]],
                  "LOG_CONCENTRATION": rows["LOG_CONCENTRATION"]}).to_csv(workdir / "rows.csv", index=False)
    shutil.rmtree(workdir / "node-b")  # the path the model was trained from is gone
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node-c"))
    r = cli("predict", workdir / "run", "--data", workdir / "rows.csv", "--out", workdir / "p.tsv")
    assert r.exit_code == 0 and f"{manifest['splits']['val']['rows']} predictions" in r.output, r.output
    assert (workdir / "node-c").is_dir()
    assert len(pd.read_csv(workdir / "p.tsv", sep="\t")) == manifest["splits"]["val"]["rows"]
