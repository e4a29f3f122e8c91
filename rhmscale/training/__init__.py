"""Training: the one trainer for K >= 1 members (a lone run is a pack of one), its step,
evaluation, checkpoints and schedules, and `execute`, the job function every executor calls.

Only this package imports Lightning (Fabric, in trainer.py)."""

from rhmscale.training.execute import RunOutcome, execute

__all__ = ["RunOutcome", "execute"]
