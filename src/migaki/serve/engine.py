"""Generation for the server: requests that arrive together for the same model are answered
in one batch (left-padded, one `generate` call), each row with its own sampling settings,
stop strings and token limit, its text streamed as it grows, and a row whose client went
away stops early. One worker thread owns the models, so torch never runs two batches at once.

`generate` is transformers' own (KV cache, PEFT adapters and prompt-learning methods alike);
what it lacks for a server — per-row temperature, top-p and seed, per-row limits and stops,
streaming several rows at once — is added through one logits processor that picks each row's
token itself and one stopping criterion that reports which rows are done."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

from migaki.precision import autocast
from migaki.serve.models import Served

log = logging.getLogger(__name__)
BATCH_WINDOW_S = 0.02  # how long the first request of a batch waits for company


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    error: BaseException | None = None


@dataclass
class Job:
    """One request's generation. `on_text` gets each new piece of text and `on_done` the
    result once, both from the worker thread."""

    served: Served
    prompt_ids: list[int]
    sampling: Sampling
    on_text: Callable[[str], None]
    on_done: Callable[[Result], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: bool = False  # on_done called


class _Row:
    """A job's state inside a batch."""

    def __init__(self, job: Job, device: torch.device) -> None:
        self.job = job
        self.ids: list[int] = []
        self.sent = ""  # text already handed to on_text
        self.finish: str | None = None
        self.generator = torch.Generator(device)
        seed = job.sampling.seed
        self.generator.manual_seed(seed if seed is not None else torch.seed() % 2**63)
        self.hold = max((len(s) for s in job.sampling.stop), default=1) - 1

    def pick(self, scores: torch.Tensor) -> int:
        """This row's next token from its logits (vocab,)."""
        sampling = self.job.sampling
        if sampling.temperature <= 0:
            return int(scores.argmax())
        probs = torch.softmax(scores.float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def add(self, token: int, tokenizer, stops: list[int]) -> None:
        if token in stops:
            self.finish = "stop"
        else:
            self.ids.append(token)
            if len(self.ids) >= self.job.sampling.max_tokens:
                self.finish = "length"
        text = self.text(tokenizer)
        cut = _first_stop(text, self.job.sampling.stop)
        if cut is not None:
            text, self.finish = text[:cut], "stop"
        if self.finish is None:
            # hold back what may be the start of a stop string or of a split character
            text = text[: len(text) - self.hold].rstrip("\ufffd")
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.job.on_text(text[len(self.sent) :])
            self.sent = text
        if self.finish is not None:
            self.complete(tokenizer)

    def text(self, tokenizer) -> str:
        return tokenizer.decode(self.ids, skip_special_tokens=True)

    def complete(self, tokenizer) -> None:
        """Hand the client the rest of its text and the result, once: as soon as the row is
        done, not when the batch is (a short answer does not wait for a long neighbour)."""
        if self.job.answered:
            return
        self.job.answered = True
        self.finish = self.finish or "length"
        text = self.text(tokenizer)
        cut = _first_stop(text, self.job.sampling.stop)
        text = text if cut is None else text[:cut]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.job.on_text(text[len(self.sent) :])
        self.job.on_done(Result(text, self.finish, len(self.job.prompt_ids), len(self.ids)))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


class _PickPerRow(LogitsProcessor):
    """Chooses every row's token with the row's own settings and leaves `generate` only that
    token to take (all other logits -inf), so greedy decoding in `generate` follows it."""

    def __init__(self, rows: list[_Row], served: Served, pad: int) -> None:
        self.rows, self.served, self.pad = rows, served, pad

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        chosen = []
        for row, logits in zip(self.rows, scores, strict=True):
            if row.finish is None and row.job.cancelled.is_set():
                row.finish = "cancelled"
                row.complete(self.served.tokenizer)
            if row.finish is not None:
                chosen.append(self.pad)
                continue
            token = row.pick(logits)
            row.add(token, self.served.tokenizer, self.served.stops)
            chosen.append(token)
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(len(chosen)), torch.tensor(chosen, device=scores.device)] = 0.0
        return forced


class _RowsDone(StoppingCriteria):
    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Engine:
    """Runs jobs on one worker thread, batching those that arrive within BATCH_WINDOW_S for
    the same served model (at most `max_batch` rows a batch)."""

    def __init__(self, max_batch: int = 16) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="migaki-generate", daemon=True)
        # batches run, rows in them, rows whose client left before the end
        self.batches = self.rows = self.cancelled = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first, *self._arrivals(time.monotonic() + BATCH_WINDOW_S)]
            if None in jobs:
                self._run_all([j for j in jobs if j is not None])
                return
            self._run_all(jobs)

    def _arrivals(self, deadline: float) -> list[Job | None]:
        jobs: list[Job | None] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                jobs.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        while True:  # everything already waiting joins too
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _run_all(self, jobs: list[Job]) -> None:
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.served), []).append(job)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch):
                self._run_batch(group[start : start + self.max_batch])

    def _run_batch(self, jobs: list[Job]) -> None:
        waiting = [job for job in jobs if not job.cancelled.is_set()]
        for job in jobs:
            if job.cancelled.is_set():
                self.cancelled += 1
                job.on_done(Result("", "cancelled", len(job.prompt_ids), 0))
        if not waiting:
            return
        self.batches += 1
        self.rows += len(waiting)
        try:
            rows = generate_rows(waiting)
        except Exception as exc:  # a bug or an out-of-memory: every waiting client hears of it
            log.exception("generation failed")
            for job in waiting:
                if not job.answered:  # rows already done keep their answer
                    job.on_done(Result("", "error", len(job.prompt_ids), 0, exc))
            return
        for row in rows:
            row.complete(row.job.served.tokenizer)  # rows generate() ended without a reason
            self.cancelled += row.finish == "cancelled"


@torch.no_grad()
def generate_rows(jobs: list[Job]) -> list[_Row]:
    """Answer jobs of one served model in one left-padded batch."""
    served = jobs[0].served
    model, tokenizer = served.model, served.tokenizer
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else served.stops[0]
    width = max(len(job.prompt_ids) for job in jobs)
    input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for i, job in enumerate(jobs):
        input_ids[i, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
        attention_mask[i, width - len(job.prompt_ids) :] = 1
    rows = [_Row(job, device) for job in jobs]
    with served.lock:
        if served.adapter is not None:
            model.set_adapter(served.adapter)
        with autocast(served.precision, device):
            model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max(job.sampling.max_tokens for job in jobs) + 1,
                do_sample=False,
                logits_processor=LogitsProcessorList([_PickPerRow(rows, served, pad)]),
                stopping_criteria=[_RowsDone(rows)],
                pad_token_id=pad,
                eos_token_id=served.stops,
                use_cache=True,
                temperature=None,
                top_p=None,
                top_k=None,
            )
    return rows
