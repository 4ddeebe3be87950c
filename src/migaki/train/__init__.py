"""Training: the loop, checkpoints, precision, schedules and run set-up."""

from migaki.train.session import plan_steps, train

__all__ = ["plan_steps", "train"]
