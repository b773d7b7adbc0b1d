"""How the benchmarks measure time and memory, the same way on every side (see bench/README.md).

- StepClock: registered as a post-step hook on the torch optimizer (torch's own
  `register_step_post_hook`, so posttrain and TRL/accelerate are clocked at the same
  point: right after AdamW updated the weights). At each optimizer step it records
  the time, the real tokens trained so far, and the peak resident memory since the
  previous step. Steady-state speed is taken between two of these ticks, so it skips
  warm-up steps and everything before the first step (optimizer, accelerate.prepare,
  dataloaders) on every side alike.
- The peak resident memory is sampled from /proc/self/statm by a background thread
  every few milliseconds, and also read from VmHWM, which is reset (Linux
  /proc/self/clear_refs) when the clock starts, so short peaks between samples count.
- PassMeter: the wall time and peak memory of one block (DPO's reference pass), with
  the same instruments.
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import threading
import time
from pathlib import Path

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_MB


def status_mb(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_hwm() -> bool:
    """Start a fresh VmHWM window (Linux clear_refs 5); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_mb("VmHWM") <= rss_mb() + 1


class StepClock:
    """Per-optimizer-step timestamps, token counts and peak RSS of one training run."""

    def __init__(self, tokens_so_far, interval_s: float = 0.005):
        self.tokens_so_far, self.interval_s = tokens_so_far, interval_s
        self.ticks: list[tuple[float, int, float]] = []  # (time, real tokens so far, peak RSS MB during the step)
        self._peak, self._stop, self._lock = 0.0, threading.Event(), threading.Lock()
        self.baseline_mb = self.hwm_reset = self._thread = None
        self.process_peak_before = self._hwm = 0.0

    def start(self) -> None:
        """Call right before the first training step: model, data and optimizer are set up."""
        gc.collect()
        self.process_peak_before = status_mb("VmHWM")  # loading and set-up, for the whole-process peak
        self.hwm_reset = reset_hwm()
        self.baseline_mb = self._peak = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = rss_mb()
            with self._lock:
                self._peak = max(self._peak, rss)

    def __call__(self, *_hook_args) -> None:  # torch optimizer post-step hook: (optimizer, args, kwargs)
        now, rss = time.perf_counter(), rss_mb()
        with self._lock:
            peak, self._peak = max(self._peak, rss), rss  # the next step's window starts here
        self.ticks.append((now, self.tokens_so_far(), peak))
        self._hwm = status_mb("VmHWM") if self.hwm_reset else 0.0  # the exact peak from start() to this step

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def result(self, warmup: int) -> dict:
        """Steady state = the steps after `warmup`, timed from the end of step `warmup` to the end of the last."""
        if len(self.ticks) <= warmup or warmup < 1:
            raise SystemExit(f"{len(self.ticks)} optimizer steps ran; --warmup-steps must be in 1..steps-1.")
        (t0, n0, _), (t1, n1, _) = self.ticks[warmup - 1], self.ticks[-1]
        train_peak = max(max(p for *_, p in self.ticks), self._hwm)
        return dict(timed_steps=len(self.ticks) - warmup, timed_tokens=n1 - n0, timed_s=t1 - t0,
                    rss_baseline_mb=self.baseline_mb, train_peak_mb=train_peak,
                    train_delta_mb=train_peak - self.baseline_mb,
                    timed_peak_sampled_mb=max(p for *_, p in self.ticks[warmup:]),
                    peak_rss_mb=max(self.process_peak_before, train_peak),
                    memory_method=("VmHWM reset + sampling" if self.hwm_reset
                                   else f"sampling every {self.interval_s * 1000:g} ms"))

    def check(self, steps: int, tokens: int) -> None:
        """The clock saw every optimizer step, each after its tokens were counted (else tokens/s would be off)."""
        if len(self.ticks) != steps or self.ticks[-1][1] != tokens:
            raise SystemExit(f"step clock out of step: {len(self.ticks)} ticks for {steps} steps, "
                             f"{self.ticks[-1][1] if self.ticks else 0} tokens at the last tick for {tokens} trained.")


class PassMeter:
    """Wall time and the peak resident memory (and its rise over the start) of one block: a reference pass.

    The same instruments as StepClock: /proc/self/statm sampled every 5 ms, and VmHWM reset at the start where the
    kernel allows it. `process_peak_before` keeps the process's peak up to the start (the reset clears it)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self._stop = interval_s, threading.Event()
        self.seconds = self.peak_mb = self.delta_mb = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, rss_mb())

    def __enter__(self):
        gc.collect()
        self.process_peak_before = status_mb("VmHWM")
        self.hwm_reset = reset_hwm()
        self.before_mb = self._peak = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._peak, rss_mb(), status_mb("VmHWM") if self.hwm_reset else 0.0)
        self.delta_mb = self.peak_mb - self.before_mb
        return False


def matmul_peak_flops(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """The best FLOP/s of n x n matmuls in this dtype with this process's threads (bf16: bf16 inputs, as
    autocast runs the model's matmuls)."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b  # warm-up: thread pool and kernels
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """'median [min-max]' of per-round values; the value alone for one round."""
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}–{fmt.format(max(values))}]"
