"""Calibration pictures are written as valid, non-empty PNG files; bad input fails before plotting."""

import subprocess
import sys

import numpy as np
import pytest

from candle_ray.errors import DataError
from candle_ray.uq_plots import coverage_plot, error_vs_sigma, reliability_diagram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, 400)
    path = reliability_diagram(probs, labels, tmp_path / "sub" / "reliability.png", bins=10)
    assert path == tmp_path / "sub" / "reliability.png"
    width, height = png_size(path)
    assert width > 300 and height > 300 and path.stat().st_size > 10_000


def test_coverage_plot(tmp_path):
    nominal = np.array([0.5, 0.7, 0.8, 0.9, 0.95])
    path = coverage_plot(nominal, {"split conformal": nominal + 0.002, "gaussian σ": nominal - 0.1},
                         tmp_path / "coverage.png")
    assert min(png_size(path)) > 300 and path.stat().st_size > 10_000
    with pytest.raises(DataError, match="curve 'short' has 2 points but nominal has 5"):
        coverage_plot(nominal, {"short": [0.5, 0.7]}, tmp_path / "bad.png")
    with pytest.raises(DataError, match="no curves"):
        coverage_plot(nominal, {}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_error_vs_sigma(tmp_path):
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.2, 2.0, 1000)
    y = rng.normal(0.0, sigma)
    path = error_vs_sigma(y, np.zeros_like(y), sigma, tmp_path / "error_sigma.png")
    assert min(png_size(path)) > 300 and path.stat().st_size > 10_000
    with pytest.raises(DataError, match="sigma must be > 0"):
        error_vs_sigma(y, np.zeros_like(y), -sigma, tmp_path / "bad.png")


def test_importing_the_module_does_not_load_matplotlib():
    code = "import sys, candle_ray.uq_plots; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
