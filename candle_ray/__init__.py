"""candle-ray: CANDLE experiments on Ray Train/Tune with MLflow tracking.

Importing this package is cheap: it pulls in neither torch nor ray nor mlflow, so that experiment
files and `candle-ray --help` stay fast.
"""

__version__ = "0.1.0"

from candle_ray.data.spec import Dataset, ReaderDataset, Source, TableDataset  # noqa: E402
from candle_ray.experiment import Experiment, Smoke  # noqa: E402

__all__ = ["Dataset", "Experiment", "ReaderDataset", "Smoke", "Source", "TableDataset", "__version__"]
