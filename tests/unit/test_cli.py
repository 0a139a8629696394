"""The command line without a cluster: help, models, and every bad input → one line, exit 1 or 2."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT, free_port

NT3 = str(ROOT / "experiments" / "nt3.py")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_help_is_fast_and_imports_no_heavy_module():
    code = "import sys; from candle_ray.cli import main; print(sorted(m for m in ('torch', 'ray', 'mlflow', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "candle-ray"), "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t0 < 5  # generous: the point is no torch/ray import (checked above)


def test_the_installed_command_exits_with_its_status_and_delivers_all_its_output(workdir):
    """`candle-ray` leaves without the interpreter's teardown: piped output still arrives whole and each
    outcome keeps its exit code."""
    rows = good_rows()
    rows[3][5] = "nan"
    failing = write_experiment(workdir, write_csv(workdir / "t.csv", rows).as_uri(), classes=2)
    exe = str(Path(sys.executable).parent / "candle-ray")
    for args, code in ((["--help"], 0), (["train", workdir / "missing.py"], 2), (["train"], 2), (["train", failing], 1)):
        done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        if code == 0:
            assert done.stdout.rstrip().endswith(invoke("--help").output.rstrip().splitlines()[-1]), done.stdout
        else:
            assert "Traceback" not in done.stderr and ("error:" in done.stderr or "Error:" in done.stderr), done.stderr


def test_models_lists_reference_counts():
    r = invoke("models")
    assert r.exit_code == 0 and "154,922,918" in r.output and "mlp" in r.output


def write_experiment(tmp_path, train, val=None, **dataset):
    opts = "".join(f", {k}={v!r}" for k, v in dataset.items())
    val_arg = f", val=Source({val!r})" if val else ""
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent(f"""
        from candle_ray import Dataset, Experiment, Source
        experiment = Experiment(
            name="bad", model="nt3",
            dataset=Dataset(name="bad", train=Source({train!r}){val_arg}{opts}),
            defaults={{"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "optimizer": "sgd"}})
    """))
    return path


def write_csv(path: Path, rows):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


def good_rows(n=8, d=40, classes=2):
    rng = np.random.default_rng(0)
    return [[i % classes, *np.round(rng.random(d), 4)] for i in range(n)]


def test_missing_experiment_file(workdir):
    one_line_error(invoke("train", workdir / "nope.py"), 2, "experiment file not found")


def test_file_without_experiment(workdir):
    (workdir / "x.py").write_text("a = 1\n")
    one_line_error(invoke("train", workdir / "x.py"), 2, "defines no `experiment`")


def test_unknown_set_key(workdir):
    one_line_error(invoke("train", NT3, "--set", "epoch=3"), 2, "unknown key 'epoch'", "did you mean epochs")


def test_wrong_type(workdir):
    one_line_error(invoke("train", NT3, "--set", "batch_size=big"), 2, "batch_size='big' is not an integer")


def test_click_usage_error_exits_2(workdir):
    assert invoke("train", NT3, "--workers", "many").exit_code == 2


def test_unreachable_url(workdir):
    exp = write_experiment(workdir, f"http://127.0.0.1:{free_port()}/nt_train2.csv", classes=2)
    one_line_error(invoke("train", exp), 1, "127.0.0.1")
    assert not list((workdir / "cache").rglob("*.part*"))


def test_checksum_mismatch(workdir):
    csv = write_csv(workdir / "train.csv", good_rows())
    exp = workdir / "exp.py"
    exp.write_text(textwrap.dedent(f"""
        from candle_ray import Dataset, Experiment, Source
        experiment = Experiment(name="bad", model="nt3",
            dataset=Dataset(name="bad", train=Source({csv.as_uri()!r}, md5="0" * 32), classes=2),
            defaults={{"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "optimizer": "sgd"}})
    """))
    one_line_error(invoke("train", exp), 1, "checksum")
    assert not (workdir / "cache" / "datasets").exists() or not list((workdir / "cache" / "datasets").iterdir())


def test_nan_in_data(workdir):
    rows = good_rows()
    rows[3][5] = "nan"
    exp = write_experiment(workdir, write_csv(workdir / "t.csv", rows).as_uri(), classes=2)
    one_line_error(invoke("train", exp), 1)
    assert "nan" in invoke("train", exp).output.lower()


def test_inf_in_data(workdir):
    rows = good_rows()
    rows[2][7] = "inf"
    exp = write_experiment(workdir, write_csv(workdir / "t.csv", rows).as_uri(), classes=2)
    r = invoke("train", exp)
    one_line_error(r, 1)
    assert "inf" in r.output.lower() or "finite" in r.output.lower()


def test_labels_out_of_range(workdir):
    rows = good_rows()
    rows[4][0] = 5
    exp = write_experiment(workdir, write_csv(workdir / "t.csv", rows).as_uri(), classes=2)
    r = invoke("train", exp)
    one_line_error(r, 1, "5")
    assert "label" in r.output.lower()


def test_feature_counts_differ(workdir):
    train = write_csv(workdir / "train.csv", good_rows(d=40))
    val = write_csv(workdir / "val.csv", good_rows(d=39))
    r = invoke("train", write_experiment(workdir, train.as_uri(), val.as_uri(), classes=2))
    one_line_error(r, 1, "40", "39")


def test_corrupt_cache_file_is_reported_with_rebuild_command(workdir):
    r = invoke("data", "prepare", NT3, "--smoke")
    assert r.exit_code == 0, r.output
    arrow = next((workdir / "cache" / "datasets").rglob("train.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrow.write_bytes(bytes(data))
    r = invoke("data", "verify")
    one_line_error(r, 1, "corrupt", "candle-ray data prepare", "--force")
    r = invoke("train", NT3, "--smoke")  # training refuses it too, before starting Ray
    one_line_error(r, 1, "corrupt")
    assert invoke("data", "prepare", NT3, "--smoke", "--force").exit_code == 0
    assert invoke("data", "verify").exit_code == 0


def test_data_ls_and_idempotent_prepare(workdir):
    assert "no entries" in invoke("data", "ls").output
    first = invoke("data", "prepare", NT3, "--smoke")
    second = invoke("data", "prepare", NT3, "--smoke")
    assert first.exit_code == second.exit_code == 0
    assert len(list((workdir / "cache" / "datasets").iterdir())) == 1
    listing = invoke("data", "ls").output
    assert "nt3-smoke" in listing and "(synthetic)" in listing


def test_verify_experiment_without_entry(workdir):
    one_line_error(invoke("data", "verify", NT3), 1, "candle-ray data prepare")


def test_file_store_tracking_uri_refused(workdir):
    one_line_error(invoke("train", NT3, "--smoke", "--tracking-uri", "./mlruns"), 2, "file store")


def test_an_existing_sweep_name_is_refused_before_ray_starts(workdir):
    from candle_ray.storage import Storage

    Storage.parse(str(workdir / "sweeps")).write_sweep("taken", {"experiment_file": NT3})
    r = invoke("tune", NT3, "--smoke", "--name", "taken", "--storage", str(workdir / "sweeps"))
    one_line_error(r, 2, "already exists", "--name taken --resume")


def test_predict_from_a_missing_store_creates_none(workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (workdir / "mlflow.db").unlink()  # the default store, ./mlflow.db, does not exist
    rows = workdir / "rows.csv"
    rows.write_text("a,b\n1,2\n")
    one_line_error(invoke("predict", "0" * 32, "--data", str(rows), "--out", str(workdir / "p.tsv")), 2, "no MLflow store at", "--tracking-uri")
    assert not (workdir / "mlflow.db").exists()


def test_data_ls_and_verify_report_every_bad_entry(workdir):
    """One corrupt entry and one unreadable manifest among three: every entry is listed or checked, each bad
    one named, and the command fails (exit 1) once, at the end."""
    for exp in ("nt3", "tc1", "p1b2"):
        assert invoke("data", "prepare", str(ROOT / "experiments" / f"{exp}.py"), "--smoke").exit_code == 0
    datasets = workdir / "cache" / "datasets"
    arrow = next(datasets.glob("nt3-*/train.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrow.write_bytes(bytes(data))
    (next(datasets.glob("p1b2-*")) / "manifest.json").write_text("{not json")
    listing = invoke("data", "ls")
    one_line_error(listing, 1, "p1b2-", "manifest.json is unreadable")
    assert "tc1-smoke" in listing.output and "nt3-smoke" in listing.output and "UNREADABLE" in listing.output
    checked = invoke("data", "verify")
    one_line_error(checked, 1, "2 of 3 cache entries are corrupt or unreadable", "nt3-smoke", "p1b2-")
    lines = checked.output.splitlines()
    assert [line.split()[0] for line in lines if line.split()[0] in ("ok", "BAD")] == ["BAD", "BAD", "ok"]
    assert any(line.startswith("ok  tc1") for line in lines)


def test_data_prepare_takes_the_dataset_a_candle_file_chooses(workdir):
    """A run with --config-file uno_by_drug_example.txt trains on another dataset than the experiment's: preparing
    it ahead (nodes without the network) needs the same file; the entry is the one the run then finds."""
    uno = str(ROOT / "experiments" / "uno.py")
    config = workdir / "by_drug.txt"
    config.write_text("[Global_Params]\ntrain_sources=['CTRP']\nsingle=True\nby_drug='paclitaxel'\n")
    r = invoke("data", "prepare", uno, "--smoke", "--config-file", str(config))
    assert r.exit_code == 0 and "by_drug='paclitaxel'" in r.output, r.output
    assert invoke("data", "verify", uno, "--smoke", "--config-file", str(config)).exit_code == 0
    one_line_error(invoke("data", "verify", uno, "--smoke"), 1, "no cache entry for uno-smoke")  # the plain one
    one_line_error(invoke("data", "verify", "--config-file", str(config)), 2, "name the experiment file too")


def test_data_rm_deletes_every_named_entry_or_none(workdir):
    for name in ("nt3", "p1b2"):
        assert invoke("data", "prepare", ROOT / "experiments" / f"{name}.py", "--smoke").exit_code == 0
    entries = sorted(p.name for p in (workdir / "cache" / "datasets").iterdir())
    one_line_error(invoke("data", "rm", "nt3-smoke", "nope"), 2, "no cache entry is named 'nope'")
    assert sorted(p.name for p in (workdir / "cache" / "datasets").iterdir()) == entries  # nothing removed
    r = invoke("data", "rm", "nt3-smoke", entries[1][:len("p1b2-smoke-") + 4], "nt3-smoke")
    assert r.exit_code == 0, r.output
    assert r.output.count("removed ") == 2 and r.output.splitlines()[-1].startswith("freed "), r.output
    assert "no entries" in invoke("data", "ls").output
    one_line_error(invoke("data", "rm", "nt3-smoke"), 2, "no cache entry is named 'nt3-smoke'")


def test_sweeps_lists_each_sweep_with_how_far_it_got(workdir):
    import csv

    from candle_ray.storage import Storage

    store = Storage.parse(str(workdir / "candle-ray-sweeps"))
    assert invoke("sweeps").output.startswith("no sweeps in ")
    results = {"done": [("a", "completed", "0.25"), ("b", "failed", "")], "cut": [("c", "running", "0.5")],
               "fresh": None, "pool": [("d", "completed", "0.125")]}
    for stamp, (name, rows) in enumerate(results.items()):
        store.write_sweep(name, {"kind": "ensemble" if name == "pool" else "sweep", "created": f"20261207-10{stamp}000",
                                 "experiment_file": NT3, "sweep": {"name": name, "metric": "val_loss",
                                                                   "searcher": "optuna", "scheduler": "asha",
                                                                   "num_samples": 4}})
        if rows is not None:
            with open(workdir / "candle-ray-sweeps" / name / "results.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerows([("trial_id", "status", "val_loss"), *rows])
    lines = invoke("sweeps").output.splitlines()
    assert [line.split()[0] for line in lines] == ["name", "done", "cut", "fresh", "pool"]
    assert lines[1].split()[1:8] == ["sweep", "nt3", "2026-12-07", "10:00", "optuna/asha", "2/4", "finished"]
    assert "val_loss 0.25" in lines[1] and lines[2].split()[6:8] == ["1/4", "interrupted"]
    assert lines[3].split()[6:9] == ["0/4", "no", "results"]
    assert lines[4].split()[-2] == "-"  # an ensemble's result is its pooled members, on its MLflow run
