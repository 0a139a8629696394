"""Checkpoints as an MLflow model: the `pyfunc` flavour that `mlflow.pyfunc.load_model`, the Model Registry
and `mlflow models serve` use.

The model's artifacts are the members' checkpoint folders (weights, config, feature scaler, target
scaler, class names: everything `candle_ray.predict` needs; an ensemble's linear baseline is one more member,
whose checkpoint holds its pool share); its `predict(frame, params)` returns the columns `candle-ray predict`
writes for the same rows. Params: `alpha` (miscoverage of the Gaussian
intervals of regressors with a spread) and `mc_dropout` (stochastic passes). Conformal sets and intervals
need labelled calibration rows, so they stay with `candle-ray predict --conformal`.

This module subclasses mlflow.pyfunc.PythonModel, so it imports MLflow; candle_ray.tracking is the only
module that calls it. Loading the model needs candle-ray installed (`--env-manager local` when serving).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd

PARAMS = {"alpha": 0.1, "mc_dropout": 0}
MEMBER = "member-"  # artifact names: member-0, member-1, ...


# `model_input: pd.DataFrame`: MLflow warns about a predict without type hints; the signature still
# validates the columns.
class CheckpointModel(mlflow.pyfunc.PythonModel):
    """An ensemble of checkpoints (one member for a single model) behind MLflow's predict."""

    def load_context(self, context) -> None:
        from candle_ray import predict

        names = sorted((k for k in context.artifacts if k.startswith(MEMBER)), key=lambda k: int(k[len(MEMBER):]))
        self.members = [predict.load_member(Path(context.artifacts[k])) for k in names]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        return predictions(self.members, model_input, {**PARAMS, **(params or {})})


def predictions(members: list, frame, params: dict):
    """`candle-ray predict`'s table for the rows of `frame` (features by name, a joined dataset's ids and doses,
    gathered from its cache entry, or a multi-task model's features in order; extra columns ignored)."""
    from candle_ray import predict
    from candle_ray.data.features import frame_for_prediction

    info = members[0].data
    X, _, ids = frame_for_prediction(frame, info, source="the model input")
    pooled = predict.predict(members, predict.array_batches(X), mc_passes=int(params["mc_dropout"]))
    return predict.table(pooled, info, alpha=float(params["alpha"]), ids=ids)


def save(path: Path, checkpoint_dirs: list[Path]) -> None:
    """Write the MLflow model of these checkpoints' best epochs to `path` (a new folder), with a signature
    and an input example (the training data's centre row, or a joined dataset's first combination)."""
    from candle_ray import predict

    staged = _stage_best(checkpoint_dirs, path.parent / f".{path.name}-members")
    members = [predict.load_member(d) for d in staged]
    example = _input_example(members[0].data)
    output = predictions(members, example, PARAMS)
    key = _template_key(example, output, len(members))
    if key in _TEMPLATES:
        return _from_template(_TEMPLATES[key], path, staged)
    _save_new(path, staged, example, output)
    _keep_template(key, path)


def _input_example(info: dict) -> pd.DataFrame:
    """A row the model takes: the training data's centre (a multi-task model's: a report's features, all 0:
    P3B1's keep no scaler), or a joined dataset's first training combination."""
    from candle_ray.data.features import is_multitask, typical_row

    if info.get("kind") != "joined" or is_multitask(info):
        return typical_row(info)
    from candle_ray.data import joined_input

    return joined_input.example_row(joined_input.entry_of(None, info))


def _save_new(path: Path, staged: list[Path], example: pd.DataFrame, output: pd.DataFrame) -> None:
    import logging
    import os

    import numpy
    import torch
    from mlflow.models import infer_signature

    from candle_ray import __version__

    signature = infer_signature(example, output, params=PARAMS)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per member is noise
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "Validating input example..."
    mlflow.pyfunc.save_model(
        # Models from code: this file is the model's code, so loading it unpickles nothing.
        str(path), python_model=__file__, artifacts={d.name: str(d) for d in staged},
        signature=signature, input_example=example,
        metadata={"candle_ray_version": __version__, "members": len(staged)},
        # Explicit, so MLflow does not infer them (slow); candle-ray itself must be installed where it loads.
        pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                          f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}"])


# MLflow's save spends its time on the feature columns: ~15 s and 8 MB for NT3's 60,483 (the signature's
# YAML, the input example's JSON and its validation), 0.2 s for 1,000. None of it depends on the weights, so
# the models of one dataset and head (a sweep's trials) share it: the first save's files are kept, and each
# later model is a copy of them with its own weights and identity (model_uuid, time, size).
_TEMPLATES: dict[str, Path] = {}
_IDENTITY = ("model_uuid", "utc_time_created", "model_size_bytes")  # top-level MLmodel keys each model owns
_KEEP = 4  # templates held per process (a few datasets or heads; each is a model's files without weights)


def _template_key(example: pd.DataFrame, output: pd.DataFrame, members: int) -> str:
    import hashlib

    values = example.to_numpy()  # typical_row's float64, or objects beside a categorical column's text or ids
    raw = values.tobytes() if values.dtype != object else "\0".join(map(str, values.ravel())).encode()
    digest = hashlib.sha256(raw + values.dtype.str.encode())
    for part in (example.columns, output.columns, output.dtypes, [members]):
        digest.update("\0".join(map(str, part)).encode() + b"\1")
    return digest.hexdigest()


def _keep_template(key: str, path: Path) -> None:
    """Keep the model's files but its weights, where its MLmodel has the identity lines `_from_template` sets."""
    import atexit
    import re
    import shutil
    import tempfile

    text = (path / "MLmodel").read_text()
    if not all(re.search(rf"^{name}: ", text, re.M) for name in _IDENTITY):
        return  # another MLflow's layout: every model is saved in full
    while len(_TEMPLATES) >= _KEEP:
        shutil.rmtree(_TEMPLATES.pop(next(iter(_TEMPLATES))), ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="candle-ray-model-template-"))
    atexit.register(shutil.rmtree, folder, True)
    shutil.copytree(path, folder, ignore=lambda where, names: ["artifacts"] if Path(where) == path else [],
                    dirs_exist_ok=True)
    _TEMPLATES[key] = folder


def _from_template(template: Path, path: Path, staged: list[Path]) -> None:
    import datetime
    import re
    import shutil
    import uuid

    shutil.copytree(template, path)
    for folder in staged:
        shutil.copytree(folder, path / "artifacts" / folder.name)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    text = (path / "MLmodel").read_text()
    for name, value in zip(_IDENTITY, (uuid.uuid4().hex, f"'{now}'", size)):
        text = re.sub(rf"^{name}: .*$", f"{name}: {value}", text, count=1, flags=re.M)
    (path / "MLmodel").write_text(text)


def _stage_best(checkpoint_dirs: list[Path], into: Path) -> list[Path]:
    """Each member's best checkpoint alone in its own folder (member-0, ...): MLflow copies an artifact under
    its folder's name, and every trial's folder is called `checkpoints`. Without the optimizer's state
    (checkpoint.without_optimizer)."""
    from candle_ray import checkpoint

    staged = []
    for i, source in enumerate(checkpoint_dirs):
        state = checkpoint.load(checkpoint.resolve(source, "best"))  # verified against its pointer
        folder = into / f"{MEMBER}{i}"
        checkpoint.save(folder, checkpoint.without_optimizer(state), kinds=("best",))
        staged.append(folder)
    return staged


# What MLflow loads from this file (models from code); a no-op when candle-ray imports the module.
mlflow.models.set_model(CheckpointModel())
