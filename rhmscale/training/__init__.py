"""Training: the one trainer for K >= 1 members (a lone run is a pack of one), its checkpoints
and schedules, and `execute`, the job function every executor calls."""

from rhmscale.training.run_pack import RunOutcome, execute

__all__ = ["RunOutcome", "execute"]
