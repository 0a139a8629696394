"""The NVIDIA path: one GPU per worker, mixed precision, NCCL for DDP. Skipped without a GPU."""

import pytest
import torch
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

NT3 = str(ROOT / "experiments" / "nt3.py")


def test_one_gpu_worker_mixed_precision(ray_cluster, workdir):
    r = CliRunner().invoke(main, ["train", NT3, "--smoke", "--set", "epochs=2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "GPU worker" in r.output and "epoch    2/2" in r.output


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_ddp_over_nccl(ray_cluster, workdir):
    r = CliRunner().invoke(main, ["train", NT3, "--smoke", "--set", "epochs=2", "--workers", "2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "2 GPU worker" in r.output
