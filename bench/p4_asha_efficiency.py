"""P4: ASHA against random search with the same budget on an NT3-format task (target <= 1/3).

Both sweeps draw the same configurations (same seed) from NT3's smoke search space (batch size,
optimizer, dropout, learning rate) and may train each for up to 9 epochs. Random search (FIFO) trains
every trial to the end; ASHA (grace 1 epoch, reduction factor 3) stops the weak ones at 1 and 3
epochs. Printed: the epochs ASHA had spent, in time order, when it first matched random's best
val_loss, divided by all the epochs random search ran.
"""

import argparse
import tempfile
from pathlib import Path

from _sweep import NT3, run_sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    common = [str(NT3), "--smoke", "--num-samples", str(args.trials), "--set", "epochs=9", "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="p4-", dir="/tmp") as tmp:
        random = run_sweep(Path(tmp), *common, "--scheduler", "fifo", "--name", "random")
        asha = run_sweep(Path(tmp), *common, "--scheduler", "asha", "--name", "asha")
    target = min(v for *_, v in random["epochs"])
    random_epochs = len(random["epochs"])
    spent, reached = 0, None
    for _, _, _, value in asha["epochs"]:
        spent += 1
        if value <= target and reached is None:
            reached = spent
    asha_best = min(v for *_, v in asha["epochs"])
    if reached is None:
        print(f"P4 ASHA vs random: ASHA never reached random's best val_loss {target:.4f} (its best {asha_best:.4f}) "
              f"in {spent} epochs; random ran {random_epochs} epochs")
    else:
        print(f"P4 ASHA vs random: random's best val_loss {target:.4f} after {random_epochs} epochs; ASHA matched it "
              f"after {reached} epochs ({spent} in all): {reached / random_epochs:.2f} (target <= 0.33) "
              f"[{args.trials} trials, up to 9 epochs, seed {args.seed}]")


if __name__ == "__main__":
    main()
