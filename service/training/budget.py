"""A wall-clock budget counted from a command's start, and what to say when it cut training short."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STOP_REASONS = ("max_steps", "patience", "time_budget")


@dataclass
class Budget:
    """`seconds` of wall-clock time from `started` (a `time.perf_counter()` reading; default: now). None: no limit.

    A command makes one when it starts and hands it to training, so set-up (imports, loading the data and the
    embeddings, priors, the first validation) spends the same budget as the steps do.
    """

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def exceeded(self, reserve_s: float = 0.0) -> bool:
        """Whether the budget is spent, or would be after `reserve_s` more seconds of work."""
        return self.seconds is not None and self.elapsed() + reserve_s > self.seconds


@dataclass(frozen=True)
class TrainingStop:
    """How a meta-training loop ended: the steps it ran of those planned, why it stopped, the step it kept."""

    steps_run: int
    planned_steps: int
    reason: str  # one of STOP_REASONS
    best_step: int
    setup_s: float  # budget spent before the first step
    budget_s: float | None

    def __post_init__(self) -> None:
        assert self.reason in STOP_REASONS, f"unknown stop reason {self.reason!r}"

    def cut_message(self) -> str | None:
        """A warning when the time budget cut the run short (None when it did not)."""
        if self.reason != "time_budget":
            return None
        return (
            f"the time budget ({self.budget_s:.0f} s, counted from the command's start; {self.setup_s:.1f} s of it "
            f"went to set-up) cut meta-training short: {self.steps_run} of {self.planned_steps} planned steps ran"
        )

    def shortfall(self, min_steps: int) -> str | None:
        """A warning when the budget stopped training too early to trust it, None otherwise.

        Too early: the budget stopped the run before min(`min_steps`, planned) steps, or the checkpoint kept is the
        untrained (step-0) one. A run that ends by its step count or by early stopping is never too early: keeping
        the step-0 model there is the validation's choice (the rating kind's readout rule makes it on purpose).
        """
        if self.reason != "time_budget":
            return None
        need = min(min_steps, self.planned_steps)
        if self.best_step == 0:
            what = "the model kept is the untrained one (step 0): no trained checkpoint beat its initialisation"
        elif self.steps_run < need:
            what = f"fewer than the {need} steps a run needs ran, so the model is barely trained"
        else:
            return None
        return (
            f"{self.cut_message()}; {what}. Raise --time-budget-s (or lower --max-steps), or run on a less loaded "
            "machine; --strict makes this an error"
        )
