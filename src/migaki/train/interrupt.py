"""A clean stop on SIGINT (Ctrl-C) and SIGTERM (what schedulers, `docker stop` and `kill`
send): the loop finishes its optimizer step, writes a checkpoint and says how to continue.
A second signal stops at once. Every process of a multi-process run stops at the same step:
the processes agree on it after each step (one small all-reduce)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import torch

from migaki.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Catches SIGINT and SIGTERM while training (a context manager); `received` is the first
    signal's number. Outside the main thread, where Python cannot take signals, it does
    nothing and the default behaviour stays."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now, without a checkpoint
            raise Interrupted(signum, -1, None, None)
        self.received = signum
        log.warning(
            "%s received: finishing this step and saving a checkpoint (send it again to stop "
            "at once)",
            signal.Signals(signum).name,
        )

    def agreed(self, accelerator) -> int | None:
        """The signal any process received, the same on every process (a collective: every
        process calls it after each step); None to go on."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item()) or None
