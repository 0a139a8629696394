"""The `candle-ray` command. Parses, calls the library, echoes; errors become exit codes 1 (failed work)
and 2 (bad usage). Heavy modules (torch, ray, mlflow, pyarrow) are imported inside commands only,
so `candle-ray --help` stays fast.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from candle_ray.data import CACHE_ENV, DEFAULT_CACHE
from candle_ray.errors import CandleRayError, UsageError
from candle_ray.job import Workers



class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CandleRayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="candle-ray")
def main():
    """CANDLE cancer deep-learning experiments on Ray, tracked in MLflow."""


def _cache(cache_dir: str | None):
    """The data cache: a local or shared folder, or s3://bucket/prefix (credentials and bucket checked here,
    before Ray starts); None: the default root."""
    from candle_ray.data.remote_cache import open_cache

    return open_cache(cache_dir)


def _prepare(experiment, *, smoke: bool, cache, force: bool = False, log=click.echo, config_file=None):
    """Download (checksum-verified) and convert the experiment's data into the cache; verify the entry.
    `config_file`: the CANDLE file whose data options chose the dataset, named in the rebuild hint."""
    from candle_ray.data.spec import ReaderDataset
    from candle_ray.data.synthetic import synthesize

    dataset = experiment.dataset
    if smoke:
        s = experiment.smoke
        dataset = synthesize(dataset, cache.root / "synthetic" / dataset.name, rows=s.rows, features=s.features, seed=s.seed)
        size = (f"~{sum(s.rows)} response rows, feature tables <= {s.features} wide" if isinstance(dataset, ReaderDataset)
                else f"{s.rows[0]} train / {s.rows[1]} val rows, {s.features} features")
        log(f"smoke mode: SYNTHETIC data in the {experiment.name} file format ({size}), not the real dataset")
    hint = (f"candle-ray data prepare {experiment.path}{f' --config-file {config_file}' if config_file else ''}"
            f"{' --smoke' if smoke else ''} --force")
    entry = cache.prepare(dataset, force=force, rebuild_hint=hint, log=log)
    cache.verify(entry)
    return entry


def _load(path):
    from candle_ray.experiment import load_experiment

    return load_experiment(path)


class WorkersType(click.ParamType):
    """N workers, or MIN-MAX for an elastic job (Ray Train's ScalingConfig(num_workers=(min, max)))."""

    name = "N|MIN-MAX"

    def convert(self, value, param, ctx) -> Workers:
        try:
            return Workers.parse(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(click.ParamType):
    """A wall-clock duration in seconds: 3600, 45s, 90m, 2h, 1h30m."""

    name = "DURATION"
    UNITS = {"h": 3600, "m": 60, "s": 1}

    def convert(self, value, param, ctx) -> float:
        import re

        text = str(value).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d*)?)([hms])", text)
        try:
            seconds = float(text) if not parts else None
        except ValueError:
            seconds = None
        if seconds is None and parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * self.UNITS[u] for n, u in parts)
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a duration above zero; write seconds or e.g. 90m, 2h, 1h30m", param, ctx)
        return seconds


cache_option = click.option("--cache-dir", envvar=CACHE_ENV, default=None, metavar="DIR",
                            help=f"Shared data cache: a folder or s3://bucket/prefix [env {CACHE_ENV}; "
                                 f"default {DEFAULT_CACHE}].")


def _sweep_options(unit: str):
    """The options of every command that runs a Tune sweep (tune, ensemble, cv, lc); `unit` is what one
    trial is there: a trial, a member, a fold, a run."""
    options = [
        click.option("--workers-per-trial", type=WorkersType(), default=1, show_default=True,
                     help=f"DDP workers per {unit} (1 = the loop runs in the trial itself); MIN-MAX (e.g. 1-4) makes "
                          f"elastic {unit}s, each a Ray Train run that grows and shrinks with the cluster."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0.01), default=1.0, show_default=True),
        click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
                     help=f"Default: as many {unit}s as the cluster fits."),
        click.option("--max-failures", type=click.IntRange(min=0), default=1, show_default=True,
                     help=f"Retries per {unit}."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help=f"Fix a value for every {unit} (repeatable)."),
        click.option("--config-file", type=click.Path(dir_okay=False),
                     help="A CANDLE *_default_model.txt as fixed overrides."),
        click.option("--smoke", is_flag=True, help="Synthetic data in the real file format, small and fast."),
        click.option("--model-per-trial/--no-model-per-trial", default=True, show_default=True,
                     help=f"Store each finished {unit}'s best weights as an MLflow model on its run (else as plain "
                          f"checkpoint files; the result's model is logged either way)."),
        click.option("--no-baseline", is_flag=True,
                     help="Skip the linear baseline (logistic / ridge regression on the same split) fitted before "
                          f"the first {unit}."),
        click.option("--name", default=None, help="The run's name: its folder under --storage [default: <experiment>-<UTC time>]."),
        click.option("--resume", is_flag=True,
                     help=f"Continue the run --name: finished {unit}s stay, unfinished ones resume from their checkpoints."),
        click.option("--storage", envvar="CANDLE_RAY_STORAGE", default="candle-ray-sweeps", show_default=True,
                     help="Where runs keep their state [env CANDLE_RAY_STORAGE]: a local or shared path, or "
                          "s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL for S3-compatible servers)."),
        click.option("--cpu", "force_cpu", is_flag=True, help="Train on CPUs even where GPUs exist."),
        click.option("--gpu", "force_gpu", is_flag=True,
                     help="Each worker takes one GPU even if no GPU node is up yet (autoscaling clusters)."),
        click.option("--autoscale", is_flag=True,
                     help="The cluster adds nodes on demand (`ray up`): run --max-concurrent trials at once and "
                          "let their waiting resources bring the nodes."),
        click.option("--address", envvar="RAY_ADDRESS", default=None, help="Existing Ray cluster [env RAY_ADDRESS]."),
        click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
                     help="MLflow tracking URI [env MLFLOW_TRACKING_URI; default sqlite:///mlflow.db in this directory]."),
        cache_option,
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def _run_sweep(experiment, run: dict, **settings) -> int:
    """Run the sweep of `experiment` with the shared options `run` and the command's own `settings`."""
    from candle_ray import sweep, tracking

    if run["resume"] and not run["name"]:
        raise UsageError("--resume needs the run's --name (its folder under --storage)")
    cache_dir = run.pop("cache_dir")
    run["baseline"] = not run.pop("no_baseline")
    uri = tracking.check_uri(run.pop("tracking_uri") or tracking.default_tracking_uri())
    return sweep.run(experiment, sweep.SweepSettings(tracking_uri=uri, sets=tuple(run.pop("sets")), **run, **settings),
                     prepare=lambda exp, smoke_: _prepare(exp, smoke=smoke_, cache=_cache(cache_dir),
                                                          config_file=run.get("config_file")), echo=click.echo)


register_option = click.option(
    "--register", default=None, metavar="NAME",
    help="Register the result (a sweep's best trial, an ensemble's members, a train run's model) in MLflow's Model "
         "Registry as a new version of NAME, aliased best: candle-ray predict models:/NAME@best.")
pick_option = click.option(
    "--pick", default=None, metavar="knee|N",
    help="From a multi-objective sweep: its Pareto front's knee, or its Nth member (as the end of the sweep "
         "numbers them) instead of the best by the first metric.")


@main.command()
@click.argument("experiment_file", metavar="EXPERIMENT")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a default, e.g. --set epochs=3 (repeatable).")
@click.option("--config-file", type=click.Path(dir_okay=False), help="A CANDLE *_default_model.txt to import as overrides.")
@click.option("--smoke", is_flag=True, help="Synthetic data in the real file format, small and fast.")
@click.option("--from-sweep", default=None, metavar="NAME",
              help="Train this finished sweep's best configuration, as the sweep ran it (its --set overrides, config "
                   "file and data); this command's --set still overrides.")
@pick_option
@click.option("--storage", envvar="CANDLE_RAY_STORAGE", default="candle-ray-sweeps", show_default=True,
              help="Where --from-sweep's folder is [env CANDLE_RAY_STORAGE].")
@click.option("--all-rows", is_flag=True,
              help="Train on the train and val rows together for exactly `epochs` epochs, with no validation: the "
                   "final model once a cv or a sweep chose the configuration and its epochs (--set epochs=N, or "
                   "--from-sweep's best epoch). Its last epoch is the model.")
@register_option
@click.option("--workers", type=WorkersType(), default=1, show_default=True,
              help="DDP workers (1 = fast path, no Ray Train start-up); MIN-MAX (e.g. 1-4) is elastic: it starts "
                   "with what fits (at least MIN) and grows or shrinks as nodes join or leave.")
@click.option("--cpu", "force_cpu", is_flag=True, help="Train on CPUs even where GPUs exist.")
@click.option("--cpus-per-worker", type=float, default=None, help="Default: the cluster's CPUs shared between workers.")
@click.option("--max-failures", type=int, default=1, show_default=True, help="Worker failures to resume from before giving up.")
@click.option("--feed", type=click.Choice(["auto", "memory", "stream"]), default="auto", show_default=True,
              help="memory: memory-mapped Arrow; stream: record batches, for data larger than memory.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Existing Ray cluster [env RAY_ADDRESS]; default: start a local one.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI [env MLFLOW_TRACKING_URI; default sqlite:///mlflow.db in this directory].")
@cache_option
@click.option("--output-dir", envvar="CANDLE_RAY_OUTPUT", default="candle-ray-runs", show_default=True,
              help="Where run folders (checkpoints, training.log) go [env CANDLE_RAY_OUTPUT].")
@click.option("--run-name", default=None, help="Default: <experiment>-<UTC time>-<random>.")
@click.option("--launcher", type=click.Choice(["auto", "task", "ray-train"]), default="auto", hidden=True,
              help="auto: one worker runs as a Ray task, several on Ray Train; ray-train forces Ray Train.")
@click.option("--inject-fault", type=int, default=None, hidden=True, help="Kill rank 0 once at this epoch (tests).")
def train(experiment_file, sets, config_file, smoke, from_sweep, pick, storage, all_rows, register, workers,
          force_cpu, cpus_per_worker, max_failures, feed, address, tracking_uri, cache_dir, output_dir, run_name,
          launcher, inject_fault):
    """Train EXPERIMENT (a .py experiment file) once and log it to MLflow."""
    started = time.monotonic()
    experiment = _load(experiment_file)
    if pick and not from_sweep:
        raise UsageError("--pick chooses one configuration of --from-sweep's Pareto front; add --from-sweep NAME")
    epochs_set = any(s.partition("=")[0].strip() == "epochs" for s in sets)  # as parse_sets reads a key
    if all_rows and not (from_sweep or epochs_set):
        raise UsageError("--all-rows trains a fixed number of epochs, with no validation rows to choose them: pass "
                         "--set epochs=N (the epoch a cv or a sweep chose) or --from-sweep NAME (its best epoch)")
    if from_sweep:
        experiment, config, config_file, smoke = _as_sweep_trained(experiment, from_sweep, pick, storage, list(sets),
                                                                   config_file, smoke, all_rows, epochs_set)
    else:
        experiment, config = experiment.resolve(config_file=config_file, sets=list(sets), smoke=smoke,
                                                warn=lambda m: click.echo(m, err=True))
    from candle_ray import tracking

    uri = tracking.check_uri(tracking_uri or tracking.default_tracking_uri())
    entry = _prepare(experiment, smoke=smoke, cache=_cache(cache_dir), config_file=config_file)
    from candle_ray.summary import comparison, counted
    from candle_ray.train import TrainOptions, run_train

    options = TrainOptions(uri, address, workers, force_cpu, cpus_per_worker, max_failures, feed, output_dir, run_name,
                           launcher, inject_fault, all_rows, register)
    result = run_train(experiment, config, entry, options, smoke=smoke, echo=click.echo,
                       warn=lambda m: click.echo(m, err=True), started=started)
    best, metric = result.best, experiment.metric
    took = (f"done in {time.monotonic() - started:.1f}s (start-up {result.startup_s:.1f}s, "
            f"compute {result.compute_s:.1f}s)")
    if all_rows:  # a held-out test split (P1B3's, ATTN's) is still scored; the val rows trained it
        test = f"test_{metric[len('val_'):]}"
        judged = (f"{test} {best[test]:.4f} on the test split" if test in best
                  else "no validation rows: its estimate is that of the cv or sweep that chose it")
        click.echo(f"{took}; trained {counted(best['epoch'], 'epoch')} on all train+val rows: "
                   f"loss {best['loss']:.4f} ({judged})")
    else:
        r2 = f" (val_r2 {best['val_r2']:.4g})" if "val_r2" in best and metric != "val_r2" else ""
        click.echo(f"{took}; best {metric} {best[metric]:.4f}{r2} at epoch {best['epoch']}")
        for warning in comparison("the best epoch", best, metric, experiment.mode, {}, entry.manifest["task"])[1:]:
            click.echo(warning)
    click.echo(f"checkpoints: {result.run_dir / 'checkpoints'}")
    click.echo(f"MLflow run {result.run_id} in {uri}; browse with: mlflow ui --backend-store-uri {uri}")
    if result.model_uri:
        click.echo(f"registered: {result.model_uri} (candle-ray predict {result.model_uri} --data ROWS.csv "
                   f"--out predictions.tsv)")


def _as_sweep_trained(experiment, name: str, pick: str | None, storage: str, sets: list[str], config_file, smoke: bool,
                      all_rows: bool = False, epochs_set: bool = False):
    """`train --from-sweep NAME`: (experiment, config, config file, smoke) of the sweep's best configuration (or
    its front member `pick`) as the sweep trained it: its --set overrides, config file and data, then the
    configuration's searched keys, then this command's --set. The run's own rng_seed, not a member's.
    `all_rows` (unless `epochs_set`: --set epochs): for the epochs that ranked it, its best epoch (a `tune --cv`
    trial's: its folds' mean's); and a `candle-ray cv` too, its configuration for its one epoch for every fold."""
    from candle_ray import ensemble as ensembles, tracking
    from candle_ray.experiment import parse_sets
    from candle_ray.summary import counted

    [best], record = ensembles.members_from_sweep(storage, name, 1, 1, 0, experiment.path, pick)
    kind = record.get("kind", "sweep")
    if kind != "sweep" and not (kind == "cv" and all_rows):
        hint = "; or add --all-rows: a final model on all train+val rows for its one epoch" if kind == "cv" else ""
        raise UsageError(f"--from-sweep {name!r} is {'an' if kind == 'ensemble' else 'a'} {kind}, whose trials share "
                         f"one configuration; pass the sweep (tune) it came from{hint}")
    best = {k: v for k, v in best.items() if v is not None and k not in ("rng_seed", "cv_fold")}  # None: unsearched
    text = None if config_file else record.get("config_text")
    config_file, smoke = config_file or record["config_file"], smoke or record["smoke"]
    if record.get("full_space"):  # the wider smoke data its full-size keys fit
        experiment = experiment.full_space_smoke()
    experiment, config = experiment.resolve(config_file=config_file, sets=[*record["sets"], *sets], smoke=smoke,
                                            config_text=text, warn=lambda m: click.echo(m, err=True))
    config.update({**best, **parse_sets(experiment.known_keys, sets)})
    if kind == "cv":
        click.echo(f"configuration of cv {name}: the experiment's" + (f", with --set {' '.join(record['sets'])}"
                                                                      if record["sets"] else ""))
    else:
        click.echo(f"configuration of sweep {name}'s {f'front member {pick}' if pick else 'best trial'}: "
                   + ", ".join(f"{k}={v}" for k, v in best.items()))
    if all_rows and not epochs_set:
        config["epochs"] = (tracking.cv_epoch(record, name) if kind == "cv"
                            else ensembles.best_epoch_of(storage, name, record, pick))
        click.echo(f"--all-rows: {counted(config['epochs'], 'epoch')}, "
                   + ("its one epoch for every fold" if kind == "cv" else "that trial's best epoch"))
    return experiment, config, config_file, smoke


@main.command()
@click.argument("experiment_file", metavar="EXPERIMENT")
@click.option("--num-samples", type=click.IntRange(min=1), default=None,
              help="Trials to sample [default 8]; with --search grid, repeats of the whole grid [default 1]. "
                   "With --resume, more than the sweep had adds trials to it (its searcher goes on learning).")
@click.option("--search", "searcher", type=click.Choice(["random", "grid", "optuna", "gp", "cmaes", "ga", "bohb"]),
              default=None, help="Searcher [default random; grid for a grid settings.json]: optuna (TPE), gp (Bayesian "
                                 "optimisation), cmaes (CMA-ES), ga (genetic, NSGA-II), bohb (TPE with Hyperband brackets).")
@click.option("--population", type=click.IntRange(min=2), default=None,
              help="--search ga: individuals per generation [default: a fifth of --num-samples, 4 to 50].")
@click.option("--crossover-prob", type=click.FloatRange(0, 1), default=None,
              help="--search ga: probability that a child mixes two parents [default 0.5, Supervisor's].")
@click.option("--mutation-prob", type=click.FloatRange(0, 1), default=None,
              help="--search ga: probability that a child's key mutates [default 1 / number of keys].")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="A CANDLE Supervisor space (GA JSON, random or grid settings.json) instead of the experiment's.")
@click.option("--scheduler", type=click.Choice(["fifo", "asha", "hyperband", "median", "pbt"]), default="asha",
              show_default=True, help="Early stopping (asha, hyperband, median) or population-based training (pbt).")
@click.option("--checkpoint-every", "checkpoint_every_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS", help="Least time between the checkpoints a trial hands to Tune (what a resume "
                                      "restarts from); 0 = every epoch. PBT always hands one over every epoch.")
@click.option("--grace-period", type=click.IntRange(min=1), default=None, metavar="EPOCHS",
              help="Epochs every trial runs before asha, hyperband or median may stop it [default: an eighth of "
                   "the epochs, at least 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the searcher and scheduler.")
@click.option("--cv", "cv_folds", type=click.IntRange(min=2), default=None, metavar="K",
              help="Each trial trains K folds of train+val (stratified for classifiers); the search sees their mean.")
@click.option("--metric", "metrics", multiple=True,
              help="Default: the experiment's metric. Repeated: a multi-objective search "
                   "over every reported metric and n_params or epoch_time_s; the first picks each trial's best "
                   "epoch and drives early stopping, the end shows the Pareto front.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["min", "max"]),
              help="Default: the experiment's mode for its own metric, else the metric's direction (max for "
                   "accuracy, AUROC, R²; min for losses, errors, n_params); with several --metric, one each or none.")
@click.option("--warm-start", "warm_start", multiple=True, metavar="SWEEP[,SWEEP]",
              help="Give the searcher (optuna, gp, bohb) the finished trials of earlier sweeps over the same keys "
                   "as evaluated points, so it starts informed.")
@click.option("--full-space", is_flag=True,
              help="With --smoke: search the full-size keys a smoke search leaves out too (the experiment's "
                   "Smoke.fixed, e.g. NT3's conv layouts), to check that every configuration builds and trains.")
@click.option("--keep-checkpoints", type=click.IntRange(min=0), default=20, show_default=True, metavar="K",
              help="Keep the weights of the K best finished trials (and of every Pareto front member) and the "
                   "running ones; the others' are deleted once they cannot be picked. 0 keeps every trial's.")
@click.option("--time-budget", "time_budget_s", type=DurationType(), default=None,
              help="End the sweep this long after the command starts (3600, 90m, 2h, 1h30m): no trial starts "
                   "after it, the running ones stop at the end of their epoch (each worth its best epoch so far), "
                   "and it ends as a finished sweep does. --resume runs the trials it left, under its own "
                   "--time-budget.")
@register_option
@_sweep_options("trial")
@click.pass_context
def tune(ctx, experiment_file, num_samples, searcher, population, crossover_prob, mutation_prob, space_file, scheduler,
         checkpoint_every_s, grace_period, seed, cv_folds, metrics, modes, warm_start, full_space, keep_checkpoints,
         time_budget_s, **run):
    """Search EXPERIMENT's space with Ray Tune; one MLflow parent run, one child run per trial."""
    if run["workers_per_trial"].elastic and cv_folds:
        raise UsageError("--cv trains the folds inside each trial, one worker each; elastic --workers-per-trial "
                         "cannot be combined with it")
    metric, mode, also = _objectives(metrics, modes)
    experiment = _load(experiment_file)
    space = None
    if space_file:
        from candle_ray.space import read_space_file

        found = read_space_file(space_file, experiment.known_keys)
        if said := found.left_out_line(space_file, experiment.name, experiment.reader_options()):
            click.echo(said, err=True)
        if found.searcher == "grid" and searcher not in (None, "grid"):
            raise UsageError(f"{space_file} is a grid settings file; use --search grid (or leave --search out)")
        space, searcher, num_samples = found.space, searcher or found.searcher, num_samples or found.num_samples
    searcher = searcher or "random"
    if not run["resume"]:  # a resumed sweep keeps its budget unless --num-samples raises it
        num_samples = num_samples or (1 if searcher == "grid" else 8)
    ga = {"population": population, "crossover_prob": crossover_prob, "mutation_prob": mutation_prob}
    if searcher != "ga" and any(v is not None for v in ga.values()):
        given = ", ".join("--" + k.replace("_", "-") for k, v in ga.items() if v is not None)
        raise UsageError(f"{given}: settings of a genetic search; add --search ga, or drop them")
    if searcher == "ga" and not run["resume"]:
        from dataclasses import asdict

        from candle_ray.samplers import GASettings

        ga = asdict(GASettings.for_budget(num_samples, **ga))
    if full_space and not run["smoke"]:
        raise UsageError("--full-space widens a --smoke search to the experiment's whole space; a search on the "
                         "real data always uses the whole space: add --smoke or drop --full-space")
    ctx.exit(_run_sweep(
        experiment, run, searcher=searcher, scheduler=scheduler,
        num_samples=num_samples, seed=seed, metric=metric, mode=mode, also=also, space=space,
        searcher_options=ga if searcher == "ga" else None,
        warm_start=tuple(name for given in warm_start for name in given.split(",") if name),
        keep_checkpoints=keep_checkpoints, time_budget_s=time_budget_s,
        checkpoint_every_s=checkpoint_every_s, grace_period=grace_period or 0, full_space=full_space,
        cv={"folds": cv_folds, "stratify": "auto", "group_by": None, "seed": seed} if cv_folds else None))


def _objectives(metrics: tuple, modes: tuple) -> tuple:
    """--metric/--mode as (metric, mode, more objectives): with several metrics, one mode per metric or none
    (None: each metric's natural direction, sweep.default_mode)."""
    if len(metrics) < 2:
        if len(modes) > 1:
            raise UsageError(f"--mode given {len(modes)} times for {len(metrics)} --metric; give one --mode per --metric")
        return (metrics[0] if metrics else None), (modes[0] if modes else None), ()
    if modes and len(modes) != len(metrics):
        raise UsageError(f"{len(metrics)} --metric take a --mode each, in the same order, or none for each one's "
                         f"natural direction (got {len(modes)}): e.g. --metric val_loss --mode min --metric n_params "
                         f"--mode min")
    if len(set(metrics)) < len(metrics):
        raise UsageError(f"--metric {' '.join(metrics)}: each objective once")
    modes = modes or (None,) * len(metrics)
    return metrics[0], modes[0], tuple(zip(metrics[1:], modes[1:]))


@main.command()
@click.argument("experiment_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--members", type=click.IntRange(min=1), default=None,
              help="Seed replicas [default 5; with --from-sweep 1 per configuration].")
@click.option("--from-sweep", default=None, metavar="NAME", help="Train the --top best configurations of this finished sweep.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="How many configurations --from-sweep takes [default 5].")
@click.option("--baseline-share", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="The share of the pooled output the linear baseline takes (the members split the rest); 0 keeps "
                   "it out of the pool, as --no-baseline does. Default: 0.5, or 0 where the networks clearly beat "
                   "it on the validation rows (paired t >= 3 over 50 rows or more). Small data: a tuned network "
                   "alone often loses to it.")
@pick_option
@register_option
@_sweep_options("member")
@click.pass_context
def ensemble(ctx, experiment_file, members, from_sweep, top, pick, baseline_share, **run):
    """Train an ensemble of EXPERIMENT (seed replicas, or a sweep's best configurations) and measure its
    uncertainty on the validation split: one MLflow parent run, one child run per member."""
    from candle_ray import ensemble as ensembles

    experiment = _load(experiment_file)
    chosen = metric = mode = None
    if pick and (top or not from_sweep):
        raise UsageError("--pick chooses one configuration of --from-sweep's Pareto front; " +
                         ("drop --top" if top else "add --from-sweep NAME"))
    if run["resume"]:
        pass  # Tune restores the members; sweep.json keeps the rest
    elif from_sweep:
        chosen, record = ensembles.members_from_sweep(run["storage"], from_sweep, top or 5, members or 1, 0,
                                                      experiment.path, pick)
        metric, mode = _as_the_sweep_ran(run, record)
    else:
        chosen = ensembles.seed_members(members or 5, 0)
    if chosen:  # replica i's seed is the run's own rng_seed + i
        base_seed, run["sets"] = _first_member_seed(experiment, run)
        chosen = [{**member, "rng_seed": base_seed + member["rng_seed"]} for member in chosen]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run["name"] = run["name"] or f"{experiment.name}-ensemble-{stamp}"
    ctx.exit(_run_sweep(experiment, run, searcher="members", scheduler="fifo", num_samples=len(chosen or []),
                        seed=0, metric=metric, mode=mode, space=None, members=chosen, kind="ensemble",
                        baseline_share=0.0 if run["no_baseline"] else
                        ensembles.BASELINE_SHARE if baseline_share is None else baseline_share,
                        baseline_share_fixed=baseline_share is not None))


def _as_the_sweep_ran(run: dict, record: dict) -> tuple[str | None, str | None]:
    """`run` (the options of a command --from-sweep) with the sweep's fixed overrides and data, which its
    configurations were trained with; the metric and mode that pick each run's epoch (member_ranking)."""
    from candle_ray import ensemble as ensembles

    run.update(sets=run["sets"] or record["sets"], config_file=run["config_file"] or record["config_file"],
               config_text=None if run["config_file"] else record.get("config_text"),
               smoke=run["smoke"] or record["smoke"])
    run["full_space"] = bool(record.get("full_space"))
    return ensembles.member_ranking(record)


def _first_member_seed(experiment, run: dict) -> tuple[int, list]:
    """The first member's rng_seed, the run's own (defaults < config file < --set: `--set rng_seed=7` seeds the
    members 7, 8, ...), and the --set items without it: each member sets its seed itself."""
    config = experiment.resolve(config_file=run["config_file"], sets=run["sets"], smoke=run["smoke"],
                                config_text=run.get("config_text"), warn=lambda *_: None)[1]
    return int(config.get("rng_seed", 0)), [s for s in run["sets"] if s.partition("=")[0].strip() != "rng_seed"]


@main.command()
@click.argument("experiment_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="K: each fold validates once.")
@click.option("--stratify/--no-stratify", default=None,
              help="Keep each class's share in every fold [default: on for a classifier without groups].")
@click.option("--group-by", default=None, metavar="COLUMN",
              help="Keep each value of COLUMN in one fold: leave-drugs-out (drug1_id), leave-cells-out (cell_id) "
                   "[default: the dataset's group= column, if it has one].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold assignment.")
@_sweep_options("fold")
@click.pass_context
def cv(ctx, experiment_file, folds, stratify, group_by, seed, **run):
    """K-fold cross-validation of EXPERIMENT over its train+val rows: one MLflow parent run with the
    folds' mean and spread, one child run per fold."""
    if stratify and group_by:
        raise UsageError("--stratify and --group-by cannot be combined; grouping decides the folds alone")
    experiment = _load(experiment_file)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run["name"] = run["name"] or f"{experiment.name}-cv-{stamp}"
    ctx.exit(_run_sweep(experiment, run, searcher="members", scheduler="fifo", num_samples=folds, seed=0,
                        metric=None, mode=None, space=None, kind="cv", members=None if run["resume"] else [{"cv_fold": k} for k in range(folds)],
                        cv={"folds": folds, "stratify": "auto" if stratify is None else stratify, "group_by": group_by,
                            "seed": seed}))


class FractionsType(click.ParamType):
    """Comma-separated shares of the training rows, each in (0, 1]: 0.125,0.25,0.5,1."""

    name = "FRACTIONS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            shares = tuple(sorted({float(v) for v in str(value).split(",") if v.strip()}))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers; write e.g. 0.125,0.25,0.5,1", param, ctx)
        if not shares or not all(0 < v <= 1 for v in shares):
            self.fail(f"{value!r}: each share of the training rows must be in (0, 1], e.g. 0.125,0.25,0.5,1",
                      param, ctx)
        return shares


@main.command()
@click.argument("experiment_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--sizes", type=FractionsType(), default="0.125,0.25,0.5,1", show_default=True,
              help="The shares of the training rows to train on (each drawn per seed, by class for a classifier).")
@click.option("--replicas", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs per size, each with its own rng_seed (its own rows and initial weights).")
@click.option("--from-sweep", default=None, metavar="NAME", help="The configuration: this finished sweep's best "
                                                                 "[default: the experiment's, with --set].")
@pick_option
@click.option("--metric", default=None, help="The curve's metric, which also picks each size's epoch and each run's checkpoint "
                                             "[default: the experiment's, or the sweep's ranking metric].")
@click.option("--mode", type=click.Choice(["min", "max"]), default=None,
              help="Default: the metric's direction (the experiment's mode for its own metric).")
@_sweep_options("run")
@click.pass_context
def lc(ctx, experiment_file, sizes, replicas, from_sweep, pick, metric, mode, **run):
    """A learning curve of EXPERIMENT: one configuration trained on growing shares of the training rows and
    scored on the same validation rows, a power law fitted through them (would more data help?), beside the
    linear baseline's; one MLflow parent run with the curve, one child run per size and seed."""
    from candle_ray import ensemble as ensembles

    experiment = _load(experiment_file)
    chosen, best = None, {}
    if pick and not from_sweep:
        raise UsageError("--pick chooses one configuration of --from-sweep's Pareto front; add --from-sweep NAME")
    if from_sweep and not run["resume"]:
        [best], record = ensembles.members_from_sweep(run["storage"], from_sweep, 1, 1, 0, experiment.path, pick)
        ranked = _as_the_sweep_ran(run, record)
        metric, mode = (metric, mode) if metric else ranked
    if not run["resume"]:
        base_seed, run["sets"] = _first_member_seed(experiment, run)
        chosen = [{**best, "train_fraction": share, "rng_seed": base_seed + r} for share in sizes for r in range(replicas)]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run["name"] = run["name"] or f"{experiment.name}-lc-{stamp}"
    ctx.exit(_run_sweep(experiment, run, searcher="members", scheduler="fifo", num_samples=len(chosen or []), seed=0,
                        metric=metric, mode=mode, space=None, members=chosen, kind="lc"))


@main.command()
@click.argument("sweep_name", metavar="SWEEP")
@click.option("--storage", envvar="CANDLE_RAY_STORAGE", default="candle-ray-sweeps", show_default=True,
              help="Where the sweep's folder is [env CANDLE_RAY_STORAGE].")
def report(sweep_name, storage):
    """Draw SWEEP's learning curves, parameter importance, parallel coordinates and best trial
    (PNGs + report.html in the sweep folder, attached to its MLflow parent run)."""
    from candle_ray import sweep

    sweep.report_command(storage, sweep_name, click.echo)


@main.command("sweeps")
@click.option("--storage", envvar="CANDLE_RAY_STORAGE", default="candle-ray-sweeps", show_default=True,
              help="Where the sweeps' folders are [env CANDLE_RAY_STORAGE].")
def sweeps(storage):
    """List the sweeps, ensembles, cvs and learning curves under --storage, oldest first: what ran, how far,
    the best trial's value (a cv's estimate, an ensemble's pooled score), and the disk its folder takes."""
    from candle_ray.storage import Storage

    store = Storage.parse(storage)
    names = store.sweeps()
    if not names:
        click.echo(f"no sweeps in {store.uri}")
        return
    found = sorted((store.overview(name) for name in names), key=lambda o: o["record"].get("created", ""))
    click.echo(f"{'name':<28} {'kind':<8} {'experiment':<16} {'created':<16} {'search':<16} {'trials':>7}  "
               f"{'state':<11} {'best':<22} {'MiB':>8}")
    for one in found:
        click.echo(_overview_line(one))


def _overview_line(overview: dict) -> str:
    """One sweep as `candle-ray sweeps` lists it (Storage.overview). No results.csv: running, or stopped
    before its end (a resume writes it)."""
    record, rows = overview["record"], overview["rows"]
    sweep, kind = record["sweep"], record.get("kind", "sweep")
    created = record.get("created", "")
    created = f"{created[:4]}-{created[4:6]}-{created[6:8]} {created[9:11]}:{created[11:13]}" if len(created) == 15 else created
    unfinished = rows is not None and any(r["status"] in ("running", "pending", "paused") for r in rows)
    state = "no results" if rows is None else ("interrupted" if unfinished else "finished")
    metric = sweep["metric"]
    if kind == "sweep":  # results.csv is ranked: the first good row is the best trial
        best = next((r[metric] for r in rows or () if r["status"] != "failed" and r.get(metric)), None)
        best = f"{metric} {float(best):.4g}" if best is not None else "-"
    else:  # a cv's one-epoch estimate, an ensemble's pooled score (sweep._record_outcome)
        best = record.get("outcome") or "-"
    return (f"{sweep['name']:<28} {kind:<8} {Path(record['experiment_file']).stem:<16} {created:<16} "
            f"{sweep['searcher'] + '/' + sweep['scheduler']:<16} {len(rows or ()):>3}/{sweep['num_samples']:<3}  "
            f"{state:<11} {best:<22} {overview['bytes'] / 2**20:>8.1f}")


def _checkpoints(model: str, tracking_uri: str | None, storage: str, top: int | None, scratch: Path,
                 pick: str | None = None) -> list[Path]:
    """MODEL as checkpoint folders/files: a path, an MLflow run id, or a sweep, ensemble or cv name."""
    import re

    from candle_ray import tracking
    from candle_ray.storage import Storage

    if top is not None and pick:
        raise UsageError(f"--top {top} pools a sweep's best trials, --pick {pick} takes one front member: pass one")
    choice = "--top" if top is not None else "--pick" if pick else None
    if Path(model).exists():
        if choice:
            raise UsageError(f"{choice} picks among a sweep's trials; {model} is a checkpoint path: drop {choice}")
        from candle_ray.checkpoint import trial_folders

        return (Path(model).is_dir() and trial_folders(Path(model))) or [Path(model)]  # a --cv trial: its folds
    if model.startswith(("models:/", "runs:/")):
        if choice:
            raise UsageError(f"{choice} picks among a sweep's trials; {model} is an MLflow model: drop {choice}")
        return tracking.model_checkpoints(tracking.check_uri(tracking_uri or tracking.default_tracking_uri()), model,
                                          scratch)
    if re.fullmatch(r"[0-9a-f]{32}", model):
        return tracking.run_checkpoints(tracking.check_uri(tracking_uri or tracking.default_tracking_uri()), model,
                                        scratch, top, pick)
    store = Storage.parse(storage)
    if store.has_sweep(model):  # its record names its parent run and where that was logged
        record = store.read_sweep(model, f"no sweep named {model!r}")
        return tracking.run_checkpoints(tracking.check_uri(tracking_uri or record["tracking_uri"]),
                                        record["parent_run_id"], scratch, top, pick)
    known = store.sweeps()
    raise UsageError(f"MODEL {model!r} is not a checkpoint path, an MLflow run id (32 hex digits), a models:/ URI or a sweep under "
                     f"{store.display()}" + (f" (sweeps there: {', '.join(known)})" if known else "")
                     + "; pass a run folder, a run id from `mlflow ui`, or a sweep name (with --storage where it ran)")


def _write_table(frame, out: Path) -> None:
    """TSV (default), CSV or Parquet by suffix, written to a temporary name and renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if out.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, sep="," if out.suffix.lower() == ".csv" else "\t", index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@main.command()
@click.argument("model")
@click.option("--data", "data_file", required=True, type=click.Path(dir_okay=False),
              help="Rows to predict: CSV, TSV or Parquet with the training features (by name, or CANDLE's header-less "
                   "layout); for Uno, Combo, P1B3 or Attn, a column per input naming ids and doses (cell, drug1, "
                   "dose1...; `data ids DATASET` lists the ids); for P3B1, a report's features per row (its archive's "
                   "*_feature.csv layout).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="predictions.tsv (.csv, .parquet also).")
@click.option("--mc-dropout", "mc_passes", type=click.IntRange(min=2), default=None, metavar="N",
              help="N stochastic passes with dropout on (Monte-Carlo dropout).")
@click.option("--conformal", "calibration_file", type=click.Path(dir_okay=False), default=None,
              help="Held-out labelled rows (same format as --data): split-conformal intervals or prediction sets.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Miscoverage: intervals and sets aim at 1 - alpha coverage.")
@click.option("--set-score", type=click.Choice(["lac", "aps"]), default="lac", show_default=True,
              help="Conformal score for classifiers' prediction sets.")
@click.option("--smoothed-sets", is_flag=True,
              help="Classifiers' sets from smoothed conformal p-values: coverage exactly 1 - alpha in expectation "
                   "(the default rank rule covers up to 1/(n+1) more), when the calibration rows are exchangeable "
                   "with the predicted ones; never the validation rows a sweep selected on. A row less typical than "
                   "nearly every calibration row gets an empty set.")
@click.option("--member-columns", is_flag=True, help="One column per ensemble member (and MC pass).")
@click.option("--times", "times_text", default=None, metavar="T[,T...]",
              help="A survival model: each row's probability of no event by each time (the time column's units, "
                   "e.g. 12,36,60 months) as columns survival_T, from the baseline hazard each model estimated on "
                   "its validation rows (Breslow); an ensemble averages its members' probabilities.")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="K",
              help="MODEL is a sweep: pool its K best trials as an ensemble [default: its best trial].")
@pick_option
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="Where MODEL's run id was logged [default: a sweep's own record, else sqlite:///mlflow.db].")
@click.option("--storage", envvar="CANDLE_RAY_STORAGE", default="candle-ray-sweeps", show_default=True,
              help="Where MODEL's sweep folder is, when MODEL is a sweep name.")
@click.option("--cpu", "force_cpu", is_flag=True, help="Predict on the CPU even where a GPU exists.")
@click.option("--no-baseline", is_flag=True, help="An ensemble's networks alone, without the linear baseline it pools.")
@cache_option
def predict(model, data_file, out, mc_passes, calibration_file, alpha, set_score, smoothed_sets, member_columns,
            times_text, top, pick, tracking_uri, storage, force_cpu, no_baseline, cache_dir):
    """Predict with MODEL, with uncertainty. MODEL is a checkpoint folder or file, an MLflow run id, an
    MLflow model (models:/NAME@best, runs:/RUN_ID/model), or a sweep, ensemble or cv by name or parent run
    id: a sweep means its best trial (--top K: its K best, pooled), an ensemble or a cv all its members."""
    import tempfile

    import torch

    from candle_ray import predict as predicting
    from candle_ray.data.features import read_for_prediction

    device = "cuda" if torch.cuda.is_available() and not force_cpu else "cpu"
    times = _survival_times(times_text) if times_text is not None else ()
    with tempfile.TemporaryDirectory(prefix="candle-ray-predict-") as scratch:
        members = [predicting.load_member(path) for path in _checkpoints(model, tracking_uri, storage, top,
                                                                              Path(scratch), pick)]
    if no_baseline:
        members = [m for m in members if m.share is None] or members
    info = members[0].data
    entry = _joined_entry(info, cache_dir)
    X, y, ids = read_for_prediction(data_file, info, joined_entry=entry)
    run = lambda rows: predicting.predict(members, predicting.array_batches(rows), mc_passes=mc_passes or 0,  # noqa: E731
                                          device=device, times=times)
    calibrator, cal_rows = _calibrate(calibration_file, info, run, alpha, set_score, smoothed_sets, entry) \
        if calibration_file else (None, 0)
    pred = run(X)
    frame = predicting.table(pred, info, alpha=alpha, calibrator=calibrator, ids=ids, member_columns=member_columns)
    _write_table(frame, Path(out))
    shares = [m.share for m in members if m.share is not None]
    how = (f"{len(members) - len(shares)} member(s)" + (f" x {mc_passes} MC-dropout passes" if mc_passes else "")
           + (f" and the linear baseline (share {shares[0]:g})" if shares else ""))
    cal = f"; conformal {1 - alpha:.0%} from {cal_rows} calibration rows" if calibration_file else ""
    click.echo(f"{len(frame)} predictions ({how}{cal}) -> {out}")
    if scored := predicting.labelled_line(frame, y, info, alpha, times):
        click.echo(scored)
    if note := predicting.spread_only_note(pred, calibrator, info):
        click.echo(note, err=True)
    if times and (note := predicting.follow_up_note(members, times)):
        click.echo(note, err=True)
    _say_empty_sets(frame, alpha)


def _survival_times(text: str) -> tuple[float, ...]:
    """--times' comma-separated positive numbers, ascending and each once."""
    try:
        times = sorted({float(part) for part in text.split(",")})
    except ValueError:
        times = []
    if not times or not all(0 < t < float("inf") for t in times):
        raise UsageError(f"--times {text!r}: give positive times in the time column's units, comma-separated "
                         f"(e.g. --times 12,36,60)")
    return tuple(times)


def _say_empty_sets(frame, alpha: float) -> None:
    """A note on the rows with an empty prediction set: less typical than (nearly) every calibration row. A
    multi-task model's (a set_size column per task) names the tasks: its heads also predict reports of the
    other tasks, which its calibration rows for a task are not."""
    sizes = frame[[c for c in frame.columns if c.endswith("set_size")]]
    empty = sizes == 0
    if rows := int(empty.any(axis=1).sum()):
        where = "set_size 0" if len(sizes.columns) == 1 else \
            ", ".join(f"{c} 0 on {int(empty[c].sum())}" for c in sizes.columns if empty[c].any())
        click.echo(f"note: {rows} of {len(frame)} rows have an empty prediction set ({where}): no class is "
                   f"plausible at alpha {alpha:g}", err=True)


def _joined_entry(info: dict, cache_dir):
    """The cache entry whose feature tables a model of a joined dataset reads its rows from; None for others.
    A multi-task model's rows are a report's features themselves: its entry, where the cache still holds it,
    only tells whether calibration rows are the model's own."""
    from candle_ray.data.features import is_multitask
    from candle_ray.data.joined_input import entry_of

    if info.get("kind") != "joined":
        return None
    try:
        return entry_of(_cache(cache_dir), info)
    except UsageError:
        if not is_multitask(info):
            raise
        return None


def _calibrate(calibration_file, info: dict, run, alpha: float, set_score: str, smoothed: bool, joined_entry):
    """(split-conformal calibrator, calibration rows) from labelled rows, with a note where coverage may
    differ from 1 - alpha."""
    from candle_ray import predict as predicting
    from candle_ray.conformal import quantile_rank
    from candle_ray.data.features import read_for_prediction, source_role

    if info.get("task") == "survival":
        raise UsageError(f"--conformal {calibration_file}: a survival model predicts a risk score, which no observed "
                         f"value measures (censored times hide many), so there is nothing to calibrate; leave out "
                         f"--conformal")
    X_cal, y_cal, _ = read_for_prediction(calibration_file, info, need_labels=True, joined_entry=joined_entry)
    calibrator = predicting.calibrate(run(X_cal), y_cal, alpha, set_score, smoothed=smoothed)
    fewest, which, sets_smoothed = len(y_cal), "", getattr(calibrator, "smoothed", False)
    if isinstance(calibrator, predicting.TaskCalibrators):  # a multi-task model: each task on its labelled rows
        (fewest, which), sets_smoothed = _fewest_task_rows(calibrator, info, calibration_file), smoothed
    if joined_entry is None:
        role = source_role(calibration_file, info)
    else:
        from candle_ray.data.joined_input import own_split

        role = own_split(X_cal, joined_entry)
    if role:  # the guarantee needs calibration rows exchangeable with new ones: these are not
        # fold models and --all-rows models trained on train+val
        what = ("trained it" if role == "train" or info.get("cv_fold") is not None or info.get("all_rows")
                else "chose its epochs (in a sweep, its trial too)")
        click.echo(f"note: {calibration_file} is this model's own {role} file: its rows {what}, so the model is "
                   f"surer of them than of new rows and its sets or intervals may cover less than "
                   f"{1 - alpha:.0%}; calibrate on labelled rows it never saw", err=True)
    # the threshold is the worst calibration row's score (smoothed sets have no such threshold)
    elif quantile_rank(fewest, alpha) >= fewest and not sets_smoothed:
        click.echo(f"note: with {fewest} calibration rows{which} at alpha {alpha:g} the conformal threshold is the "
                   f"largest calibration score: sets and intervals are as wide as the worst row and cover "
                   f"up to {1 / (fewest + 1):.0%} more than {1 - alpha:.0%}; "
                   f"{math.ceil((2 - alpha) / alpha)} or more rows make them tighter", err=True)
    return calibrator, len(y_cal)


def _fewest_task_rows(calibrator, info: dict, calibration_file) -> tuple[int, str]:
    """(the fewest calibration rows any task of a multi-task model had, " for TASK"), after a note on each task
    that had none (its rows get no prediction sets)."""
    from candle_ray.data.features import task_names

    counts = dict(zip(task_names(info), calibrator.rows))
    for name in (name for name, n in counts.items() if not n):
        click.echo(f"note: no row of {calibration_file} has a {name} label, so {name} gets no prediction sets",
                   err=True)
    return min((n, f" for {name}") for name, n in counts.items() if n)


@main.group()
def data():
    """Prepare, list and verify the shared Arrow data cache."""


_data_config_file = click.option(
    "--config-file", type=click.Path(exists=True, dir_okay=False),
    help="A CANDLE *_default_model.txt whose data options (Uno's agg_dose, train_sources, by_drug...) choose "
         "the dataset, as train and tune read them: prepare it before a run on nodes without the network.")


def _with_file_data(experiment, config_file):
    """`experiment` with the dataset a CANDLE config file's data options choose (its other keys are a run's)."""
    if not config_file:
        return experiment
    return experiment.resolve(config_file=config_file, warn=lambda m: click.echo(m, err=True))[0]


@data.command("prepare")
@click.argument("experiment_file", metavar="EXPERIMENT")
@_data_config_file
@click.option("--smoke", is_flag=True, help="Prepare the synthetic smoke dataset instead.")
@click.option("--force", is_flag=True, help="Rebuild the entry even if it exists.")
@cache_option
def data_prepare(experiment_file, config_file, smoke, force, cache_dir):
    """Download and convert EXPERIMENT's dataset into the cache (idempotent)."""
    cache = _cache(cache_dir)
    entry = _prepare(_with_file_data(_load(experiment_file), config_file), smoke=smoke, cache=cache, force=force,
                     config_file=config_file)
    where = f"{cache.display(entry)} (node-local copy {entry.path})" if cache.remote else entry.path
    click.echo(f"ready: {where} ({entry.rows['train']} train / {entry.rows['val']} val rows, "
               f"{entry.num_features} features)")


@data.command("ls")
@cache_option
def data_ls(cache_dir):
    """List the cache's entries."""
    from candle_ray.data.cache_format import entry_bytes

    cache, broken = _cache(cache_dir), []
    entries = cache.entries(broken)
    if not entries and not broken:
        click.echo(f"no entries in {cache.uri if cache.remote else cache.root}")
        return
    click.echo(f"{'dataset':<28} {'fingerprint':<17} {'train':>7} {'val':>6} {'features':>9} {'MiB':>8}  created")
    for e in entries:
        name = e.name + (" (synthetic)" if e.synthetic else "")
        click.echo(f"{name:<28} {e.fingerprint:<17} {e.rows['train']:>7} {e.rows['val']:>6} "
                   f"{e.num_features:>9} {entry_bytes(e.manifest) / 2**20:>8.1f}  {e.manifest['created']}")
    for folder, _ in broken:
        click.echo(f"{folder:<46} UNREADABLE")
    downloads = sum(f.stat().st_size for f in cache.downloads.rglob("*") if f.is_file())
    if downloads:  # the sources entries were built from: often larger than the entries
        click.echo(f"downloads{' on this node' if cache.remote else ''}: {downloads / 2**20:.1f} MiB in "
                   f"{cache.downloads} (`candle-ray data rm ENTRY --downloads` deletes an entry's own)")
    _fail_for(broken, len(entries) + len(broken), "unreadable")


@data.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="ENTRY...")
@click.option("--downloads", is_flag=True, help="Also delete the downloaded files they were built from that no "
                                                "other entry was (a later prepare downloads them again).")
@cache_option
def data_rm(names, downloads, cache_dir):
    """Delete cache entries (each a name, or name-fingerprint where several share it, as `data ls` lists
    them) to free their disk; `data prepare` builds one again. A run reading one goes on; models of
    Uno, Combo, P1B3 and Attn read their entry's features to predict, and say how to rebuild it."""
    from candle_ray.data.cache_format import named

    cache = _cache(cache_dir)
    listed = cache.entries([])  # an unreadable entry does not stop the removal of the others
    chosen = {f"{e.name}-{e.fingerprint}": e for e in (named(listed, n) for n in names)}  # every name, before any delete
    freed = 0
    for key, entry in chosen.items():
        size = cache.remove(entry, log=click.echo)
        freed += size
        click.echo(f"removed {key} ({size / 2**20:.1f} MiB)")
    if downloads:
        freed += cache.drop_downloads([e.manifest for e in chosen.values()], log=click.echo)
    click.echo(f"freed {freed / 2**20:.1f} MiB")


@data.command("ids")
@click.argument("dataset")
@click.option("--column", default=None, metavar="NAME", help="One input column (cell, drug1...) [default: each].")
@cache_option
def data_ids(dataset, column, cache_dir):
    """The ids that rows to predict may name, for a model of joined DATASET (Uno, Combo, P1B3, Attn; a name
    or name-fingerprint as `data ls` lists it): one `COLUMN<TAB>ID` line each, to grep or join."""
    from candle_ray.data import joined_input

    cache = _cache(cache_dir)
    entry = joined_input.named_entry(cache, dataset)
    if entry.manifest.get("kind") != "joined":
        raise UsageError(f"{dataset} is a matrix of features: its rows to predict name the features, not ids")
    if len(entry.manifest["label_columns"]) > 1:
        raise UsageError(f"{dataset} is multi-task: its rows to predict hold a report's "
                         f"{entry.manifest['num_features']} features, not ids")
    columns = joined_input.ids_by_column(entry)
    if column is not None and column not in columns:
        raise UsageError(f"--column {column!r} is not an id column of {dataset}; use one of {', '.join(columns)}")
    for key, ids in columns.items():
        if column in (None, key):
            click.echo("\n".join(f"{key}\t{i}" for i in ids))


def _fail_for(bad: list, total: int, what: str) -> None:
    """After listing every entry: the one bad entry's own error (it names the fix), or how many were bad."""
    from candle_ray.errors import CacheError

    if len(bad) == 1:
        raise bad[0][1]
    if bad:
        raise CacheError(f"{len(bad)} of {total} cache entries are {what}: {', '.join(name for name, _ in bad)}; "
                         f"`candle-ray data verify` names each one's problem and the command that rebuilds it")


@data.command("verify")
@click.argument("experiment_file", metavar="[EXPERIMENT]", required=False)
@_data_config_file
@click.option("--smoke", is_flag=True, help="Verify the smoke dataset of EXPERIMENT.")
@cache_option
def data_verify(experiment_file, config_file, smoke, cache_dir):
    """Check every cache entry (or EXPERIMENT's) against its manifest checksums."""
    from candle_ray.errors import CacheError

    cache, bad = _cache(cache_dir), []
    if config_file and not experiment_file:
        raise UsageError("--config-file chooses the dataset of an EXPERIMENT; name the experiment file too")
    if experiment_file:
        experiment = _with_file_data(_load(experiment_file), config_file)
        dataset = experiment.dataset
        if smoke:
            from candle_ray.data.synthetic import synthesize

            s = experiment.smoke
            dataset = synthesize(dataset, cache.root / "synthetic" / dataset.name, rows=s.rows, features=s.features, seed=s.seed)
        entry = cache.lookup(dataset)
        if entry is None:
            raise CacheError(f"no cache entry for {dataset.name}; create it with: candle-ray data prepare "
                             f"{experiment.path}{f' --config-file {config_file}' if config_file else ''}"
                             f"{' --smoke' if smoke else ''}")
        entries = [entry]
    else:
        entries = cache.entries(bad)
    total = len(entries) + len(bad)
    for folder, exc in bad:
        click.echo(f"BAD {folder}: {exc}")
    for entry in entries:
        try:
            cache.verify(entry, deep=True) if cache.remote else cache.verify(entry)  # remote: hash every object
        except CacheError as exc:  # go on: every entry's state, not only the first bad one's
            bad.append((f"{entry.name}-{entry.fingerprint}", exc))
            click.echo(f"BAD {entry.name} {entry.fingerprint}: {exc}")
            continue
        click.echo(f"ok  {entry.name} {entry.fingerprint}")
    _fail_for(bad, total, "corrupt or unreadable")
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} verified")


@main.command("models")
def models_cmd():
    """List the registered models with their parameter counts at the defaults."""
    from candle_ray import models

    click.echo(f"{'model':<8} {'parameters':>13} {'reference':>13}  description")
    for name in models.NAMES:
        info = models.info(name)
        count = models.count_parameters(name)
        ref = f"{info.reference_params:,}" if info.reference_params else "-"
        click.echo(f"{name:<8} {count:>13,} {ref:>13}  {info.description}")


@main.command("ui")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address; 0.0.0.0 exposes it to the network.")
@click.option("--port", default=5000, show_default=True)
def ui(tracking_uri, host, port):
    """Start the MLflow UI on this directory's runs."""
    from candle_ray import tracking

    uri = tracking.check_uri(tracking_uri or tracking.default_tracking_uri())
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    click.echo(f"MLflow UI on http://{host}:{port} ({uri})")
    os.execve(sys.executable, cmd, env)


@main.group("cluster")
def cluster_cmd():
    """Check a `ray up` cluster YAML before launching it."""


@cluster_cmd.command("check")
@click.argument("cluster_yaml", metavar="CLUSTER_YAML")
@click.argument("experiment_file", metavar="EXPERIMENT")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True,
              help="GPUs each trial worker needs (0 = a CPU sweep).")
@click.option("--workers-per-trial", type=WorkersType(), default=1, show_default=True,
              help="DDP workers per trial, as for `candle-ray tune` (an elastic MIN-MAX trial counts at MIN).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
def cluster_check(cluster_yaml, experiment_file, gpus_per_worker, workers_per_trial, cpus_per_worker):
    """Validate CLUSTER_YAML with Ray's own schema (offline) and check that it can run one trial of
    EXPERIMENT: the GPUs asked for exist, max_workers fits a trial, the experiment is shipped."""
    from candle_ray import cluster as clusters

    experiment = _load(experiment_file)
    config = clusters.load(cluster_yaml)
    missing = clusters.missing_mounts(config)
    if missing:
        raise UsageError(f"{cluster_yaml}: file_mounts source(s) {', '.join(missing)} do not exist on this machine; "
                         f"create them, or run from the repository root (relative paths start there)")
    remote = clusters.shipped(config, experiment.path)
    if remote is None:
        raise UsageError(f"{experiment.path} is not under any file_mounts source of {cluster_yaml}; add its folder "
                         f"to file_mounts (e.g. \"~/my-experiments\": \"{experiment.path.parent}\")")
    report = clusters.check(config, workers_per_trial=workers_per_trial, gpus_per_worker=gpus_per_worker,
                            cpus_per_worker=cpus_per_worker, name=cluster_yaml)
    import ray

    click.echo(f"{cluster_yaml}: valid for Ray {ray.__version__} ({config['provider']['type']}, "
               f"max_workers {config.get('max_workers', 0)})")
    for t in report.node_types:
        cpus = "auto" if t.cpus is None else f"{t.cpus:g}"
        role = "head" if t.head else f"workers {t.min_workers}..{t.max_workers}"
        click.echo(f"  {t.name:<20} {cpus:>5} CPU {t.gpus:>3g} GPU  {role}")
    size = f"{cpus_per_worker:g} CPU" + (f" + {gpus_per_worker} GPU" if gpus_per_worker else "")
    click.echo(f"one trial = {workers_per_trial} worker(s) of {size}: up to {report.max_trials} trial(s) at once "
               f"at max_workers, {report.start_trials} with the min_workers nodes `ray up` starts")
    if report.start_trials == 0:
        click.echo("warning: candle-ray tune sizes a sweep from the nodes present when it starts; raise min_workers "
                   "or start the sweep once `ray status` shows the workers", err=True)
    lines = clusters.placeholders(Path(cluster_yaml).read_text())
    if lines:
        click.echo(f"warning: {cluster_yaml} line(s) {', '.join(map(str, lines))} still hold a CHANGE-ME placeholder; "
                   f"edit them before `ray up`", err=True)
    flags = (f" --workers-per-trial {workers_per_trial}" if workers_per_trial.max > 1 else "") + \
        (f" --cpus-per-worker {cpus_per_worker:g}" if cpus_per_worker != 1 else "") + ("" if gpus_per_worker else " --cpu")
    click.echo(f"experiment {experiment.name}: shipped as {remote}")
    click.echo(f"run: ray exec {cluster_yaml} 'candle-ray tune {remote}{flags}' --tmux")


def run() -> None:
    """The installed `candle-ray` command: `main`, then an exit without the interpreter's teardown of every
    loaded module (~2 s per command here once torch, Ray and MLflow are loaded). Nothing else is skipped:
    non-daemon threads are joined and every exit handler (Ray's shutdown, MLflow's and logging's flushes)
    runs first, as in a normal exit."""
    import atexit

    status = 1  # an uncaught exception prints its traceback, then exits 1 as usual

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing left to deliver
                pass
        os._exit(status)

    atexit.register(leave)  # registered before anything else (import candle_ray.cli registers none): runs last
    try:
        main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        raise
