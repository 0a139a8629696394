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


def test_skipping_ended_trials_chooses_what_tunes_fifo_chooses():
    """candle-ray's FIFO/ASHA/median pick the next trial without walking the ended ones: the same pick as
    Tune's own FIFO at every step of a sweep whose trials start, pause, retry (moved to the end) and end."""
    import pickle

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler as TuneFIFO

    from candle_ray.search import FIFOScheduler

    class Controller:
        def __init__(self, trials):
            self.trials = trials

        def get_trials(self):
            return self.trials

    rng = random.Random(0)
    ours, theirs = FIFOScheduler(), TuneFIFO()
    trials = []
    controller = Controller(trials)
    for _ in range(3000):
        if rng.random() < 0.3:
            trials.append(Trial("__fake", stub=True))
        live = [t for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]
        if live and rng.random() < 0.6:
            trial = rng.choice(live)
            move = rng.random()
            if move < 0.6:
                trial.set_status(rng.choice([Trial.TERMINATED, Trial.ERROR]))
            elif move < 0.8:
                trial.set_status(rng.choice([Trial.RUNNING, Trial.PAUSED]))
            else:  # Tune's retry of a failed trial: PENDING again, at the end of the list
                trial.set_status(Trial.PENDING)
                trials.remove(trial)
                trials.append(trial)
        chosen = theirs.choose_trial_to_run(controller)
        assert ours.choose_trial_to_run(controller) is chosen
        if chosen is not None and rng.random() < 0.5:
            chosen.set_status(Trial.RUNNING)
    assert ours._ended_head[1] > 100  # it did skip the ended head of the list
    assert not hasattr(pickle.loads(pickle.dumps(ours)), "_ended_head")  # a restored sweep starts afresh
