"""The schedulers candle-ray builds, driven through Tune's loop in miniature (real Tune trials and
schedulers, no cluster)."""

import random

from candle_ray.search import make_scheduler
from candle_ray.trial import HYPERBAND_TIME


def _run(scheduler, rng: random.Random, trials: int = 9, epochs: int = 6, concurrency: int = 2) -> list:
    """Up to `concurrency` trials run, one epoch at a time in random order. A trial's last epoch reaches the
    scheduler as a result or, when its function has already returned, only as its completion (Tune does
    both, by timing). The trials still not terminated when nothing more can run: a hung sweep."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    class Controller:  # the one call Hyperband makes on Tune's controller
        def stop_trial(self, trial):
            trial.set_status(Trial.TERMINATED)
            scheduler.on_trial_remove(self, trial)

    controller = Controller()
    pool = [Trial("__fake", stub=True, config={"i": i}) for i in range(trials)]
    for trial in pool:
        scheduler.on_trial_add(controller, trial)
    epoch, running = {trial: 0 for trial in pool}, []
    while True:
        while len(running) < concurrency and (trial := scheduler.choose_trial_to_run(controller)) is not None:
            trial.set_status(Trial.RUNNING)
            running.append(trial)
        if not running:
            return [trial for trial in pool if trial.status != Trial.TERMINATED]
        trial = running.pop(rng.randrange(len(running)))
        epoch[trial] += 1
        result = {"epoch": epoch[trial], HYPERBAND_TIME: epoch[trial], "best_val_loss": rng.random()}
        last = epoch[trial] == epochs
        ended_first = last and rng.random() < 0.5
        action = TrialScheduler.STOP if ended_first else scheduler.on_trial_result(controller, trial, result)
        if action == TrialScheduler.PAUSE:
            trial.set_status(Trial.PAUSED)
        elif action == TrialScheduler.STOP or last:
            trial.set_status(Trial.TERMINATED)
            scheduler.on_trial_complete(controller, trial, result)
        else:
            running.append(trial)


def test_hyperband_never_leaves_a_trial_paused_at_its_last_epoch():
    """With Ray 2.60's defaults, a trial paused at max_t waits for its bracket, and when the bracket's last
    trial then ends on its own nothing resumes or stops it: 106 of these 200 orders hung (the suite once
    waited on test_tune's Hyperband sweep for 8 minutes). candle-ray's Hyperband lets the last round run
    to its end."""
    for seed in range(200):
        scheduler = make_scheduler("hyperband", "val_loss", "min", max_epochs=6, space={}, seed=0)
        assert _run(scheduler, random.Random(seed)) == [], seed
