"""Per-model inference statistics, as Triton's ModelStatistics reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class ModelStats:
    """Cumulative counts and durations since the model was loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    last_inference_ms: int = 0
    #: Backend calls; None until the model's requests run batched (then a call may serve several).
    executions: int | None = None
    #: Batched calls' compute by batch size (rows), as Triton's batch_stats.
    batches: dict[int, Duration] = field(default_factory=dict)

    @property
    def inference_count(self) -> int:
        return self.success.count

    @property
    def execution_count(self) -> int:
        """Backend calls: one per request, unless requests ran batched."""
        return self.success.count if self.executions is None else self.executions

    def record_execution(self, rows: int, calls: int, ns: int) -> None:
        """A batch of `rows` ran in `calls` backend calls (more than one: it ran again request by request)."""
        self.executions = (self.executions or 0) + calls
        self.batches.setdefault(rows, Duration()).add(ns)

    def record_success(self, queued_ns: int, started_ns: int, finished_ns: int) -> None:
        self.success.add(finished_ns - queued_ns)
        self.queue.add(started_ns - queued_ns)
        self.compute_infer.add(finished_ns - started_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_conversions(self, input_ns: int, output_ns: int) -> None:
        """Time spent checking inputs and preparing outputs of a successful request.

        perf_analyzer requires the compute_input/infer/output counts to be equal, so this
        is called once for every record_success.
        """
        self.compute_input.add(input_ns)
        self.compute_output.add(output_ns)

    def set_totals(self, success: int, fail: int, last_inference_ms: int) -> None:
        """Take the counts from another process's statistics (a runtime's V2 ModelStatistics):
        what a holder of models that run elsewhere knows of their use."""
        self.success.count = success
        self.fail.count = fail
        self.last_inference_ms = max(self.last_inference_ms, last_inference_ms)

    def record_failure(self, queued_ns: int, finished_ns: int) -> None:
        self.fail.add(finished_ns - queued_ns)
        self.last_inference_ms = int(time.time() * 1000)
