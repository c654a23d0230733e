"""The batcher of ``nmt serve`` (:mod:`nmt.serve`): requests' sentences to the one thread that runs the model.

A request's handler submits its sentences as a :class:`Job`; the one collector task takes the jobs that
arrive within a few milliseconds of each other, up to a token budget, and hands them to the one model
thread (:class:`ModelThread`), which searches them in the model batches of ``translate_lines`` (one set of
search options at a time) and answers each job with its own hypotheses.

Exactly one thread ever touches the model: inference on one model must not run concurrently, and two
searches would only fight over the same cores. While it searches, the event loop keeps accepting
requests, so under load the next batch is fuller by itself.

Nobody waits for work nobody wants: a job whose client disconnects (or whose handler is cancelled) leaves
the queue at once; a model batch none of whose sentences is still wanted is skipped, or, if it is being
searched, ends at its next decoder step (:class:`Interruptible`). At shutdown every job still waiting is
answered 503 and the search in progress ends the same way; the model thread is a daemon, so nothing it does
can keep the process alive after "nmt: stopped".
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from dataclasses import dataclass, field

import torch

from nmt import search
from nmt.data.buckets import search_batches
from nmt.errors import RequestError
from nmt.translate import translate_lines

MAX_PENDING_SENTENCES = 50_000  # queued across requests; beyond it new requests get 503, not memory growth
BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for others to join it


@dataclass(frozen=True)
class SearchOptions:
    """The options one ``translate_lines`` call shares: only jobs with equal options are batched together."""

    beam: int = 5
    nbest: int = 1
    alpha: float = 0.6
    max_length_ratio: float = 2.0
    attention: bool = False


@dataclass
class Job:
    """The sentences of one request, waiting for the model."""

    sentences: list[str]
    encoded: list[list[int]]
    options: SearchOptions
    future: asyncio.Future
    left: bool = False  # its client disconnected or its handler was cancelled: read by the model thread

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.encoded)


class ModelError(Exception):
    """The search failed; the message is one line."""


class SearchAbandoned(Exception):
    """Raised in the model thread at the next step of a search nobody waits for any more."""


class Interruptible:
    """``task`` as the search sees it, except that its encoder and every decoder step first ask
    ``abandoned()``: a search whose requests have all left ends within one step (:class:`SearchAbandoned`)
    instead of running on to its length cap. Everything else is ``task``'s own."""

    def __init__(self, task, abandoned):
        self._task, self._abandoned = task, abandoned

    def __getattr__(self, name):
        return getattr(self._task, name)

    def _check(self) -> None:
        if self._abandoned():
            raise SearchAbandoned

    def encode(self, *args):
        self._check()
        return self._task.encode(*args)

    def decode_step(self, *args):
        self._check()
        return self._task.decode_step(*args)

    def decode_step_with_attention(self, *args):
        self._check()
        return self._task.decode_step_with_attention(*args)


class ModelThread:
    """The one thread that runs the model, one call at a time. A daemon (a ``ThreadPoolExecutor``'s
    worker is joined at exit): a search that does not stop cannot keep the process alive."""

    def __init__(self):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="nmt-model", daemon=True)
        self.thread.start()

    async def call(self, function, *args):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.calls.put((function, args, loop, future))
        return await future

    def close(self, wait_s: float = 0.0) -> None:
        self.calls.put(None)
        self.thread.join(timeout=wait_s)

    def _loop(self) -> None:
        while (item := self.calls.get()) is not None:
            function, args, loop, future = item
            try:
                outcome = (future.set_result, function(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (future.set_exception, exc)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future, setter, value) -> None:
    if not future.done():  # cancelled meanwhile (the collector, at shutdown)
        setter(value)


@dataclass
class Batcher:
    """One queue, one collector task, one model thread; see the module docstring.

    ``translate`` is :func:`nmt.translate.translate_lines`, called once per model batch (a test may put
    a failing one in its place)."""

    task: object
    batch_tokens: int = 4000
    wait_s: float = BATCH_WAIT_S
    max_pending: int = MAX_PENDING_SENTENCES
    translate: object = translate_lines
    stats: dict = field(default_factory=lambda: {"requests": 0, "sentences": 0, "batches": 0,
                                                 "largest_batch_requests": 0, "model_errors": 0,
                                                 "abandoned_requests": 0, "abandoned_model_batches": 0})

    def __post_init__(self):
        self.waiting: collections.deque[Job] = collections.deque()  # in arrival order; a job that left is removed
        self.arrived = asyncio.Event()
        self.model = ModelThread()
        self.pending = 0  # sentences queued or being translated
        self.searching: list[Job] = []  # the jobs handed to the model thread
        self.stopping = False

    async def submit(self, sentences: list[str], encoded: list[list[int]], options: SearchOptions,
                     client_left=None) -> list[list[search.Hypothesis]]:
        """The hypotheses of each sentence, once the model has reached them; ``client_left``, an awaitable
        that returns when the client disconnects, withdraws the job (its answer would reach nobody)."""
        if self.stopping:
            raise RequestError(503, "server", "shutting down")
        if self.pending + len(sentences) > self.max_pending:
            raise RequestError(503, "server", f"busy: {self.pending} sentences are waiting; try again shortly")
        job = Job(sentences, encoded, options, asyncio.get_running_loop().create_future())
        self.pending += len(sentences)
        self.stats["requests"] += 1
        self.stats["sentences"] += len(sentences)
        self.waiting.append(job)
        self.arrived.set()
        watcher = asyncio.ensure_future(client_left) if client_left is not None else None
        try:
            if watcher is not None:
                await asyncio.wait((job.future, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not job.future.done():  # 499: nginx's "client closed request"; the answer reaches nobody
                raise RequestError(499, "request", "the client closed the connection before the answer")
            return await job.future
        finally:
            if watcher is not None:
                watcher.cancel()
            if not job.future.done():  # the client left, or this handler was cancelled
                self.withdraw(job)
            self.pending -= len(sentences)

    def withdraw(self, job: Job) -> None:
        """``job`` is wanted no more: out of the queue if it is there, and its sentences unsearched."""
        job.left = True
        job.future.cancel()
        self.stats["abandoned_requests"] += 1
        with contextlib.suppress(ValueError):  # not in the queue: taken by the collector already
            self.waiting.remove(job)

    async def run(self) -> None:
        """The collector: forever, one batch of jobs to the model thread, then the next."""
        while True:
            jobs = await self._collect()
            groups: dict[SearchOptions, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                await self._translate(options, group)

    async def _collect(self) -> list[Job]:
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        first = self.waiting.popleft()
        jobs, tokens = [first], first.tokens
        # Take what is queued already (under load: all that came while the model was busy); if the
        # budget is not full, wait a moment for requests sent at the same time, then take those too.
        # A job that would overflow the budget stays first in the queue, for the next batch.
        for wait in (0.0, self.wait_s):
            if tokens >= self.batch_tokens or (self.waiting and tokens + self.waiting[0].tokens > self.batch_tokens):
                break
            if wait:
                await asyncio.sleep(wait)
            while self.waiting and tokens + self.waiting[0].tokens <= self.batch_tokens:
                job = self.waiting.popleft()
                jobs.append(job)
                tokens += job.tokens
        return [job for job in jobs if not job.future.done()]  # a client that left is not waited for

    async def _translate(self, options: SearchOptions, jobs: list[Job]) -> None:
        self.searching = jobs
        try:
            hyps = await self.model.call(self._search, jobs, options)
        except Exception as exc:  # noqa: BLE001 - the server must outlive any failure of one batch
            self.stats["model_errors"] += 1
            error = ModelError(f"{type(exc).__name__}: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self.searching = []
        self.stats["batches"] += 1
        self.stats["largest_batch_requests"] = max(self.stats["largest_batch_requests"], len(jobs))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(hyps[start:start + len(job.sentences)])
            start += len(job.sentences)

    def _search(self, jobs: list[Job], options: SearchOptions) -> list[list[search.Hypothesis]]:
        """In the model thread: the hypotheses of every sentence of ``jobs``, searched in the model batches
        ``translate_lines`` makes (the same budget), one call each, so that a batch is searched only while
        a sentence in it is still wanted; an abandoned sentence gets no hypotheses."""
        sentences = [s for job in jobs for s in job.sentences]
        encoded = [ids for job in jobs for ids in job.encoded]
        owner = [job for job in jobs for _ in job.sentences]
        results: list[list[search.Hypothesis]] = [[] for _ in sentences]
        extra = {"attention": True} if options.attention else {}  # asked for only when wanted
        for batch in search_batches(encoded, options.beam, self.batch_tokens):
            batch = [i for i in batch if not owner[i].left]
            if self.stopping or not batch:
                continue

            def abandoned(batch=batch) -> bool:
                return self.stopping or all(owner[i].left for i in batch)

            try:
                with torch.inference_mode():  # thread-local: it has to be entered here, in the model's thread
                    hyps = self.translate(Interruptible(self.task, abandoned), [sentences[i] for i in batch],
                                          options.beam, options.nbest, options.alpha, self.batch_tokens,
                                          options.max_length_ratio, [encoded[i] for i in batch], **extra)
            except SearchAbandoned:
                self.stats["abandoned_model_batches"] += 1
                continue
            for i, h in zip(batch, hyps):
                results[i] = h
        return results

    def stop(self, wait_s: float = 0.0) -> None:
        """At shutdown: every job not yet answered gets 503, none is left hanging; the search in progress
        ends at its next step, and the model thread then ends (waited for up to ``wait_s``)."""
        self.stopping = True
        for job in [*self.waiting, *self.searching]:
            if not job.future.done():
                job.future.set_exception(RequestError(503, "server", "shutting down"))
        self.waiting.clear()
        self.model.close(wait_s)
