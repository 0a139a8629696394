"""What a training process used over each epoch (worker side): CPU, memory and GPU memory, under MLflow's
system-metric names, so a trial's MLflow run shows them in its System metrics tab beside the epoch's
samples/s, and a trial starved of CPU (process CPU well under its workers' share) or of memory shows.

MLflow's own SystemMetricsMonitor samples from a thread of the process that owns the run, which for a
sweep is the driver, not the trial: here rank 0 samples itself once an epoch and the numbers travel with
the epoch's metrics. `--set system_metrics=false` turns them off.
"""

from __future__ import annotations

MB = 2 ** 20


class EpochUsage:
    """psutil counters since the previous call: CPU percentages are means over the epoch."""

    def __init__(self, device):
        import psutil

        self.psutil, self.process, self.device = psutil, psutil.Process(), device
        self.process.cpu_percent(None)  # the first call only starts the clocks
        psutil.cpu_percent(None)
        self._reset_gpu_peak()

    def _cuda(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"

    def _reset_gpu_peak(self) -> None:
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def sample(self) -> dict[str, float]:
        memory = self.psutil.virtual_memory()
        out = {"system/cpu_utilization_percentage": self.psutil.cpu_percent(None),
               "system/system_memory_usage_megabytes": (memory.total - memory.available) / MB,
               "system/system_memory_usage_percentage": memory.percent,
               # 100 = one core busy all epoch: compare with the CPUs the worker was given
               "system/process_cpu_percentage": self.process.cpu_percent(None),
               "system/process_memory_rss_megabytes": self.process.memory_info().rss / MB}
        if self._cuda():
            import torch

            out["system/gpu_0_memory_usage_megabytes"] = torch.cuda.max_memory_allocated(self.device) / MB
            self._reset_gpu_peak()
        return out
