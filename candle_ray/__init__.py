"""candle-ray: CANDLE experiments on Ray Train/Tune with MLflow tracking.

Importing this package is cheap: it pulls in neither torch nor ray nor mlflow, so that experiment
files and `candle-ray --help` stay fast.
"""

__version__ = "0.1.0"

from candle_ray.data.spec import Dataset, ReaderDataset, Source, TableDataset  # noqa: E402
from candle_ray.experiment import Experiment, Smoke  # noqa: E402

__all__ = ["Dataset", "Experiment", "ReaderDataset", "Smoke", "Source", "TableDataset", "__version__", "when"]


def when(then=None, **condition):
    """A search-space key searched only when another key has a value: `"momentum": when(optimizer="sgd",
    then=tune.uniform(0.5, 0.99))` (candle_ray.conditional; imported here lazily, it needs ray)."""
    from candle_ray.conditional import when as conditional_when

    return conditional_when(then, **condition)
