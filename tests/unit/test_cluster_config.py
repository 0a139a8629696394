"""The `ray up` YAMLs under cluster/ pass Ray's own (offline) config validation, and
`candle-ray cluster check` refuses clusters that cannot run a trial. No cloud calls, no Ray cluster."""

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement

from candle_ray import cluster
from candle_ray.cli import main
from candle_ray.errors import UsageError
from candle_ray.job import Workers

ROOT = Path(__file__).resolve().parents[2]
YAMLS = ["cluster/ray.yaml", "cluster/ray-gcp.yaml"]


def raw(name="cluster/ray.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def requirement(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == name)


@pytest.fixture
def repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # file_mounts sources are relative to where `ray up` runs
    return ROOT


def write(tmp_path, config: dict, name="c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


# ------------------------------------------------------------------ the shipped YAMLs


@pytest.mark.parametrize("name", YAMLS)
def test_shipped_yaml_passes_rays_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw(name)))
    validate_config(config)  # raises on any schema violation
    assert cluster.validate(raw(name), name)["head_node_type"] == raw(name)["head_node_type"]


@pytest.mark.parametrize("name", YAMLS)
def test_shipped_yaml_layout(name):
    config = cluster.validate(raw(name), name)
    types = {t.name: t for t in cluster.node_types(config)}
    head = types[config["head_node_type"]]
    assert head.gpus == 0 and head.cpus
    gpu_workers = [t for t in types.values() if not t.head and t.gpus > 0]
    assert gpu_workers and all(0 <= t.min_workers <= t.max_workers for t in gpu_workers)
    assert sum(t.min_workers for t in types.values()) <= config["max_workers"]
    # the repository (experiments/, models/) goes to every node; the local venv and .git do not
    assert config["file_mounts"]["~/candle-ray"] == "."
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]
    assert "__pycache__" in config["rsync_exclude"]


@pytest.mark.parametrize("name", YAMLS)
def test_shipped_yaml_pins_what_pyproject_allows(name):
    import ray

    text = (ROOT / name).read_text()
    config = raw(name)
    torch_pins = set(re.findall(r"torch==([0-9.]+)", text))
    assert torch_pins and all(requirement("torch").specifier.contains(v) for v in torch_pins)
    images = [config["docker"]["head_image"], config["docker"]["worker_image"]]
    versions = {re.search(r":([0-9.]+)-py311", i).group(1) for i in images}
    assert versions == {ray.__version__} and requirement("ray").specifier.contains(ray.__version__)
    # the project is installed from the shipped copy on every node
    assert any("pip install" in c and "~/candle-ray" in c for c in config["head_setup_commands"])
    assert any("pip install" in c and "~/candle-ray" in c for c in config["worker_setup_commands"])


@pytest.mark.parametrize("name", YAMLS)
def test_shipped_yaml_mlflow_server_and_s3(name):
    text = (ROOT / name).read_text()
    config = raw(name)
    server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    assert "--host 0.0.0.0" in server and "ON PURPOSE" in text  # all interfaces, deliberately, said so
    assert "--backend-store-uri sqlite:" in server and "--artifacts-destination $CANDLE_RAY_S3/" in server
    setup = "\n".join(config["setup_commands"])
    assert re.search(r"CANDLE_RAY_S3=s3://", setup)
    assert "CANDLE_RAY_STORAGE=$CANDLE_RAY_S3/" in setup and "CANDLE_RAY_CACHE=$CANDLE_RAY_S3/" in setup
    assert "--dashboard-host=127.0.0.1" in "\n".join(config["head_start_ray_commands"])


# ------------------------------------------------------------------ validation errors


def test_schema_violation_is_one_line_usage_error():
    bad = raw()
    bad["available_node_types"]["ray.worker.g5"]["resources"]["GPU"] = "one"
    with pytest.raises(UsageError, match=r"Ray rejects it at available_node_types/ray.worker.g5/resources/GPU") as e:
        cluster.validate(bad, "bad.yaml")
    assert "\n" not in str(e.value)


def test_unknown_key_and_head_type_refused():
    bad = raw()
    bad["max_wrokers"] = 3
    with pytest.raises(UsageError, match="Ray rejects it"):
        cluster.validate(bad)
    bad = raw()
    bad["head_node_type"] = "nope"
    with pytest.raises(UsageError, match="head_node_type"):
        cluster.validate(bad)


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="cluster file not found"):
        cluster.load(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        cluster.load(tmp_path / "broken.yaml")
    (tmp_path / "other.yaml").write_text("name: x\n")
    with pytest.raises(UsageError, match="no provider.type"):
        cluster.load(tmp_path / "other.yaml")


# ------------------------------------------------------------------ the fit rules


def cpu_only() -> dict:
    config = raw()
    del config["available_node_types"]["ray.worker.p4d"]
    g5 = config["available_node_types"]["ray.worker.g5"]
    g5["resources"] = {"CPU": 4}
    g5["node_config"]["InstanceType"] = "m5.xlarge"
    return config


def test_gpu_run_on_cluster_without_gpu_types_refused():
    config = cluster.validate(cpu_only())
    with pytest.raises(UsageError, match=r"asks for 1 GPU per worker but no node type .* declares resources"):
        cluster.check(config, gpus_per_worker=1)
    report = cluster.check(config, gpus_per_worker=0)  # a CPU sweep fits: head 8 + 8 workers x 4
    assert report.max_trials == 8 + 8 * 4 and report.start_trials == 8 + 2 * 4


def g5_only(max_g5: int, global_max: int = 10) -> dict:
    config = raw()
    del config["available_node_types"]["ray.worker.p4d"]
    config["available_node_types"]["ray.worker.g5"].update(min_workers=0, max_workers=max_g5)
    config["max_workers"] = global_max
    return cluster.validate(config)


def test_trial_fits_exactly_at_max_workers_and_not_one_more():
    assert cluster.check(g5_only(4), workers_per_trial=Workers(4, 4)).max_trials == 1
    with pytest.raises(UsageError, match=r"one trial needs 5 worker\(s\) of 1 CPU \+ 1 GPU but the cluster holds at "
                                         r"most 4 .*raise max_workers of ray.worker.g5 .* to 5"):
        cluster.check(g5_only(4), workers_per_trial=Workers(5, 5))


def test_global_max_workers_caps_the_node_types():
    with pytest.raises(UsageError, match="holds at most 3"):
        cluster.check(g5_only(8, global_max=3), workers_per_trial=Workers(4, 4))


def test_cpus_per_worker_limit_bundles_per_node():
    config = raw()
    config["available_node_types"]["ray.worker.p4d"]["max_workers"] = 1
    config = cluster.validate(config)
    # p4d: 96 CPU / 8 GPU -> 8 workers of 12 CPU; 13 CPU -> 7. g5: 4 CPU -> none of 12.
    assert cluster.check(config, workers_per_trial=Workers(8, 8), cpus_per_worker=12).max_trials == 1
    with pytest.raises(UsageError, match="holds at most 7"):
        cluster.check(config, workers_per_trial=Workers(8, 8), cpus_per_worker=13)


def test_undeclared_cpus_count_by_gpus_only():
    config = raw()
    del config["available_node_types"]["ray.worker.g5"]["resources"]["CPU"]
    types = {t.name: t for t in cluster.node_types(cluster.validate(config))}
    assert types["ray.worker.g5"].cpus is None and types["ray.worker.g5"].bundles(64, 1) == 1


def test_zero_trials_at_start_is_reported():
    report = cluster.check(g5_only(8), workers_per_trial=Workers(2, 2))
    assert report.start_trials == 0 and report.max_trials == 4


def test_elastic_trials_count_at_their_minimum():
    """An elastic MIN-MAX trial starts with MIN workers: the cluster must hold MIN, and trials count at MIN."""
    report = cluster.check(g5_only(8), workers_per_trial=Workers(2, 6))
    assert (report.max_bundles, report.max_trials) == (8, 4)
    with pytest.raises(UsageError, match=r"one trial needs 5 worker\(s\) of 1 CPU \+ 1 GPU but the cluster holds at "
                                         r"most 4 .*raise max_workers of ray.worker.g5 .* to 5"):
        cluster.check(g5_only(4), workers_per_trial=Workers(5, 8))


def test_node_bundles_are_the_planners_worker_slots():
    from candle_ray.runtime import worker_slots

    p4d = {t.name: t for t in cluster.node_types(cluster.validate(raw()))}["ray.worker.p4d"]
    assert p4d.bundles(12, 1) == worker_slots(p4d.cpus, p4d.gpus, 12, 1) == 8
    assert p4d.bundles(13, 1) == 7


def test_shipped_and_mounts(tmp_path, repo_cwd):
    config = cluster.validate(raw())
    assert cluster.shipped(config, ROOT / "experiments" / "nt3.py") == "~/candle-ray/experiments/nt3.py"
    assert cluster.shipped(config, tmp_path / "mine.py") is None
    assert cluster.missing_mounts(config) == []
    assert cluster.placeholders((ROOT / "cluster/ray.yaml").read_text())  # the bucket line to edit


# ------------------------------------------------------------------ the command


def test_cli_check_accepts_the_shipped_aws_yaml(repo_cwd):
    r = CliRunner().invoke(main, ["cluster", "check", "cluster/ray.yaml", "experiments/nt3.py"])
    assert r.exit_code == 0, r.output
    assert "valid for Ray" in r.output and "ray.worker.g5" in r.output
    assert "run: ray exec cluster/ray.yaml 'candle-ray tune ~/candle-ray/experiments/nt3.py' --tmux" in r.output
    assert "CHANGE-ME placeholder" in r.output  # warned, not refused


@pytest.mark.parametrize("workers, trials", [("2", 12), ("2-4", 12)])
def test_cli_check_counts_trials_of_n_or_min_max_workers(repo_cwd, workers, trials):
    r = CliRunner().invoke(main, ["cluster", "check", "cluster/ray.yaml", "experiments/nt3.py",
                                  "--workers-per-trial", workers])
    assert r.exit_code == 0, r.output
    assert f"one trial = {workers} worker(s) of 1 CPU + 1 GPU: up to {trials} trial(s) at once" in r.output
    assert f"'candle-ray tune ~/candle-ray/experiments/nt3.py --workers-per-trial {workers}'" in r.output


def test_cli_check_gcp_needs_its_hmac_file(repo_cwd, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    r = CliRunner().invoke(main, ["cluster", "check", "cluster/ray-gcp.yaml", "experiments/nt3.py"])
    assert r.exit_code == 2 and "~/.candle-ray-gcs do not exist" in r.output
    (tmp_path / ".candle-ray-gcs").mkdir()
    r = CliRunner().invoke(main, ["cluster", "check", "cluster/ray-gcp.yaml", "experiments/nt3.py"])
    assert r.exit_code == 0, r.output


def test_cli_check_refusals_are_one_line_exit_2(repo_cwd, tmp_path):
    runner = CliRunner()
    no_gpu = write(tmp_path, cpu_only())
    r = runner.invoke(main, ["cluster", "check", no_gpu, "experiments/nt3.py"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--gpus-per-worker 0" in r.output
    r = runner.invoke(main, ["cluster", "check", no_gpu, "experiments/nt3.py", "--gpus-per-worker", "0"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(main, ["cluster", "check", "cluster/ray.yaml", "experiments/nt3.py", "--workers-per-trial", "25"])
    assert r.exit_code == 2 and "holds at most 24" in r.output
    r = runner.invoke(main, ["cluster", "check", "cluster/ray.yaml", "experiments/nt3.py", "--workers-per-trial", "3-1"])
    assert r.exit_code == 2 and "larger than the maximum" in r.output

    mine = tmp_path / "mine.py"
    mine.write_text((ROOT / "experiments" / "nt3.py").read_text())
    r = runner.invoke(main, ["cluster", "check", "cluster/ray.yaml", str(mine)])
    assert r.exit_code == 2 and "is not under any file_mounts source" in r.output

    r = runner.invoke(main, ["cluster", "check", str(tmp_path / "nope.yaml"), "experiments/nt3.py"])
    assert r.exit_code == 2 and "cluster file not found" in r.output


def test_cli_import_stays_light():
    code = "import sys, candle_ray.cli; print(sorted(m for m in ('yaml', 'ray', 'torch', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ray_submit_entry_point_runs_the_cli(repo_cwd):
    # `ray submit cluster/ray.yaml cluster/submit.py -- cluster check ...` runs exactly this on the head
    out = subprocess.run([sys.executable, "cluster/submit.py", "cluster", "check", "cluster/ray.yaml",
                          "experiments/nt3.py", "--gpus-per-worker", "0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'candle-ray tune ~/candle-ray/experiments/nt3.py --cpu'" in out.stdout
