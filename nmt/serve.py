"""``nmt serve``: a trained translation run behind an HTTP JSON API, batching concurrent requests.

One request goes through three steps:

1. its handler (on the event loop) reads the body up to a byte cap, checks every field against the
   bounds of the ``nmt translate`` option of the same name, and encodes the sentences;
2. it joins a queue as a :class:`Job`; the one collector task takes the jobs that arrive within a few
   milliseconds of each other, up to a token budget;
3. the collector hands them to the one model thread as one ``translate_lines`` call per set of search
   options, and answers each job with its own hypotheses.

Exactly one thread ever touches the model: inference on one model must not run concurrently, and two
searches would only fight over the same cores. While it searches, the event loop keeps accepting
requests, so under load the next batch is fuller by itself.

Endpoints: ``POST /translate``, ``GET /health`` (with the batch counters) and ``GET /``, a small page.
"""
from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import math
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from nmt import search
from nmt.alignment import EOS_PIECE
from nmt.errors import RequestError, UserError, shorten
from nmt.serve_page import PAGE
from nmt.translate import compile_decoder, encode_lines, translate_lines

MAX_BODY_BYTES = 1 << 20  # 1 MiB: thousands of sentences; a bigger body is refused before it is held
MAX_SENTENCES = 1000  # per request: one request must not hold the model for everyone else for minutes
MAX_PENDING_SENTENCES = 50_000  # queued across requests; beyond it new requests get 503, not memory growth
BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for others to join it
DEFAULTS = {"beam": 5, "nbest": 1, "alpha": 0.6, "max_length_ratio": 2.0}
OPTIONS = (*DEFAULTS, "max_input_tokens")  # named as the nmt translate options, with _ for -
# Searched once at start under --compile, so that no request waits for the compiler: one sentence
# greedily (a batch of one row, which Dynamo compiles apart: it specialises sizes of 1), two at beam 2
# (several rows, the one graph dynamic in them).
WARM_UP = ("warm up", "the compiled step is ready")
FLAGS = ("attention",)  # JSON true/false: "attention" returns each hypothesis's weights and the pieces they cover


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

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.encoded)


class ModelError(Exception):
    """The search failed; the message is one line."""


# --- the request -------------------------------------------------------------------------------

def option_types() -> dict:
    """The click types of the ``nmt translate`` options, so both front ends refuse the same values
    with the same words (a bound changed there is changed here)."""
    from nmt.cli import translate

    return {p.name.replace("-", "_"): p.type for p in translate.params if p.name in OPTIONS}


def check_option(name: str, value, kind):
    """``value`` of JSON field ``name``, type-checked strictly (JSON ``"5"`` or ``true`` is not a beam),
    then bounded by the CLI's converter."""
    integer = kind.kind is int
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RequestError(422, name, f"expected {'an integer' if integer else 'a number'}, got {shorten(json.dumps(value))}")
    try:
        return kind.convert(value, None, None)
    except UserError as exc:
        raise RequestError(422, name, exc.what) from None


def parse_request(body: bytes, max_sentences: int, default_max_tokens: int) -> tuple[list[str], SearchOptions, int]:
    """(sentences, search options, max input tokens) of a ``POST /translate`` body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else shorten(str(exc))
        raise RequestError(400, "request", f"not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise RequestError(422, "request", f'expected a JSON object such as {{"sentences": ["..."]}}, got {type(data).__name__}')
    known = ("sentences", *OPTIONS, *FLAGS)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            raise RequestError(422, shorten(key, 40), f"unknown field{hint}")
    sentences = data.get("sentences")
    if not isinstance(sentences, list):
        raise RequestError(422, "sentences", "required: a list of strings")
    if len(sentences) > max_sentences:
        raise RequestError(413, "sentences", f"{len(sentences)} sentences, more than the {max_sentences} one request may hold")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise RequestError(422, f"sentences[{i}]", f"expected a string, got {shorten(json.dumps(sentence))}")
    types = option_types()
    values = {name: check_option(name, data[name], types[name]) if name in data else default
              for name, default in DEFAULTS.items()}
    if values["nbest"] > values["beam"]:
        raise RequestError(422, "nbest", f"must not exceed beam ({values['nbest']} > {values['beam']})")
    max_tokens = data.get("max_input_tokens")
    max_tokens = default_max_tokens if max_tokens is None else check_option("max_input_tokens", max_tokens,
                                                                              types["max_input_tokens"])
    for name in FLAGS:
        if not isinstance(data.get(name, False), bool):
            raise RequestError(422, name, f"expected true or false, got {shorten(json.dumps(data[name]))}")
    return sentences, SearchOptions(**values, attention=data.get("attention", False)), max_tokens


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit`` bytes: never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "request", f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "request", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def finite(number: float) -> float | None:
    """``number``, or None for -inf or NaN: strict JSON has no such numbers (Starlette refuses them)."""
    return number if math.isfinite(number) else None


def error_response(status: int, message: str, where: str | None = None) -> JSONResponse:
    """``{"error": "nmt: <where>: <what>", "field": where}``: one line, like every nmt error."""
    line = " ".join(message.split())  # a model's multi-line message must not break the one-line form
    return JSONResponse({"error": f"nmt: {shorten(line, 400)}", "field": where}, status_code=status)


# --- the batcher -------------------------------------------------------------------------------

@dataclass
class Batcher:
    """One queue, one collector task, one model thread; see the module docstring.

    ``translate`` is :func:`nmt.translate.translate_lines` (a test may put a failing one in its place)."""

    task: object
    batch_tokens: int = 4000
    wait_s: float = BATCH_WAIT_S
    max_pending: int = MAX_PENDING_SENTENCES
    translate: object = translate_lines
    stats: dict = field(default_factory=lambda: {"requests": 0, "sentences": 0, "batches": 0,
                                                 "largest_batch_requests": 0, "model_errors": 0})

    def __post_init__(self):
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-model")
        self.pending = 0  # sentences queued or being translated
        self._held: Job | None = None  # taken from the queue but over the budget: first of the next batch

    async def submit(self, sentences: list[str], encoded: list[list[int]], options: SearchOptions) -> list[list[search.Hypothesis]]:
        """The hypotheses of each sentence, once the model has reached them."""
        if self.pending + len(sentences) > self.max_pending:
            raise RequestError(503, "server", f"busy: {self.pending} sentences are waiting; try again shortly")
        job = Job(sentences, encoded, options, asyncio.get_running_loop().create_future())
        self.pending += len(sentences)
        self.stats["requests"] += 1
        self.stats["sentences"] += len(sentences)
        self.queue.put_nowait(job)
        try:
            return await job.future
        finally:
            self.pending -= len(sentences)

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
        first, self._held = self._held or await self.queue.get(), None
        jobs, tokens = [first], first.tokens
        # Take what is queued already (under load: all that came while the model was busy); if the
        # budget is not full, wait a moment for requests sent at the same time, then take those too.
        for wait in (0.0, self.wait_s):
            if tokens >= self.batch_tokens or self._held:
                break
            if wait:
                await asyncio.sleep(wait)
            while not self.queue.empty() and tokens < self.batch_tokens:
                job = self.queue.get_nowait()
                if tokens + job.tokens > self.batch_tokens:
                    self._held = job
                    break
                jobs.append(job)
                tokens += job.tokens
        return [job for job in jobs if not job.future.done()]  # a client that left is not waited for

    async def _translate(self, options: SearchOptions, jobs: list[Job]) -> None:
        sentences = [s for job in jobs for s in job.sentences]
        encoded = [ids for job in jobs for ids in job.encoded]
        loop = asyncio.get_running_loop()
        try:
            hyps = await loop.run_in_executor(self.executor, self._search, sentences, encoded, options)
        except Exception as exc:  # noqa: BLE001 - the server must outlive any failure of one batch
            self.stats["model_errors"] += 1
            error = ModelError(f"{type(exc).__name__}: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self.stats["batches"] += 1
        self.stats["largest_batch_requests"] = max(self.stats["largest_batch_requests"], len(jobs))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(hyps[start:start + len(job.sentences)])
            start += len(job.sentences)

    def _search(self, sentences, encoded, options: SearchOptions):
        extra = {"attention": True} if options.attention else {}  # asked for only when wanted
        with torch.inference_mode():  # thread-local: it has to be entered here, in the model's thread
            return self.translate(self.task, sentences, options.beam, options.nbest, options.alpha,
                                  self.batch_tokens, options.max_length_ratio, encoded, **extra)

    def fail_pending(self) -> None:
        """At shutdown: every job still queued is answered (503), none left hanging."""
        jobs = [self._held] if self._held else []
        while not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(RequestError(503, "server", "shutting down"))
        self.executor.shutdown(wait=False)


# --- the app -----------------------------------------------------------------------------------

def create_app(task, run_name: str, batch_tokens: int = 4000, wait_s: float = BATCH_WAIT_S,
               max_body_bytes: int = MAX_BODY_BYTES, max_sentences: int = MAX_SENTENCES) -> Starlette:
    """The Starlette app serving ``task`` (a loaded translation run); ``app.state.batcher`` holds the counters,
    ``app.state.compiled`` says whether the decoder step was compiled (``/health`` reports both)."""
    if not hasattr(task, "src_tokenizer") or not hasattr(task, "decode_step"):
        raise UserError(run_name, f"task '{task.recipe.spec.task}' does not translate; nmt serve needs a seq2seq run")
    default_max_tokens = 4 * task.recipe.data.max_length  # as nmt translate's --max-input-tokens
    device = str(next(task.parameters()).device)

    def hypothesis_json(h: search.Hypothesis) -> dict:
        out = {"translation": task.tgt_tokenizer.decode(h.tokens), "score": finite(h.score), "log_prob": finite(h.log_prob)}
        attention = getattr(h, "attention", None)  # [target, source] weights, when the request asked for them
        if attention is not None:
            out["attention"] = attention.tolist() if hasattr(attention, "tolist") else attention
            pieces = task.tgt_tokenizer.pieces(h.tokens)
            out["target_pieces"] = pieces + [EOS_PIECE] * (len(out["attention"]) - len(pieces))  # the rows
        return out

    async def translate_endpoint(request: Request) -> JSONResponse:
        batcher: Batcher = request.app.state.batcher
        try:
            body = await read_body(request, max_body_bytes)
            sentences, options, max_tokens = parse_request(body, max_sentences, default_max_tokens)
            if options.attention and not hasattr(task, "decode_step_with_attention"):
                raise RequestError(422, "attention", "this model does not report attention weights")
            encoded = encode_lines(task, sentences)
            cut = [len(ids) > max_tokens for ids in encoded]
            encoded = [ids[:max_tokens] for ids in encoded]
            results = await batcher.submit(sentences, encoded, options)
        except RequestError as exc:
            return error_response(exc.status, exc.message, exc.where)
        except ModelError as exc:
            return error_response(500, f"model: {exc}", None)
        translations = []
        for hyps, was_cut, ids in zip(results, cut, encoded):
            items = [hypothesis_json(h) for h in hyps]
            best = items[0] if items else {"translation": "", "score": None, "log_prob": None}
            translations.append({**best, "cut": was_cut, "hypotheses": items})
            if options.attention:  # the columns of every hypothesis's weights
                translations[-1]["source_pieces"] = task.src_tokenizer.pieces(ids)
        return JSONResponse({"translations": translations})

    async def health(request: Request) -> JSONResponse:
        batcher: Batcher = request.app.state.batcher
        return JSONResponse({"ok": True, "run": run_name, "model_loaded": True, "device": device,
                             "compiled": request.app.state.compiled,
                             "pending_sentences": batcher.pending, "stats": dict(batcher.stats),
                             "limits": {"max_body_bytes": max_body_bytes, "max_sentences": max_sentences,
                                        "max_input_tokens": default_max_tokens, "batch_tokens": batch_tokens}})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"{request.url.path}: {exc.detail}", None)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"server: {type(exc).__name__}: {exc}", None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.batcher = Batcher(task, batch_tokens=batch_tokens, wait_s=wait_s)
        collector = asyncio.create_task(app.state.batcher.run())
        try:
            yield
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            app.state.batcher.fail_pending()

    routes = [Route("/translate", translate_endpoint, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/", page, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.compiled = False  # the decoder step through torch.compile (serve_run's compile_step)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the model loads: a port in use is a one-line error at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise UserError("--host", f"cannot resolve {host!r} ({exc.strerror})") from None
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # strerror repeats the address here
        raise UserError("--port", f"cannot listen on {host}:{port} ({reason})") from None


def compile_search(task, run_dir: Path, batch_tokens: int) -> None:
    """``--compile``: the decoder step through ``torch.compile``, compiled now by searching :data:`WARM_UP`."""
    compile_decoder(task, run_dir)
    print("nmt: compiling the decoder step (seconds to a minute)", file=sys.stderr, flush=True)
    encoded = encode_lines(task, list(WARM_UP))
    with torch.inference_mode():  # as the model thread searches: grad mode is part of what a graph assumes
        translate_lines(task, list(WARM_UP[:1]), 1, 1, DEFAULTS["alpha"], batch_tokens, DEFAULTS["max_length_ratio"],
                        encoded[:1])
        translate_lines(task, list(WARM_UP), 2, 1, DEFAULTS["alpha"], batch_tokens, DEFAULTS["max_length_ratio"],
                        encoded)


def serve_run(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
              device: str = "auto", batch_tokens: int = 4000, wait_s: float = BATCH_WAIT_S,
              compile_step: bool = False) -> None:
    """Serve ``run_dir`` until interrupted (Ctrl-C or SIGTERM end it cleanly); ``compile_step``: see
    :func:`compile_search`."""
    import uvicorn

    from nmt.runs import load_run

    sock = listen(host, port)
    try:
        task = load_run(run_dir, checkpoint=checkpoint, device=device)
        app = create_app(task, Path(run_dir).resolve().name, batch_tokens=batch_tokens, wait_s=wait_s)
        if compile_step:
            compile_search(task, run_dir, batch_tokens)
            app.state.compiled = True
        shown = f"[{host}]" if ":" in host else host
        print(f"nmt: serving {run_dir} on http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
        with contextlib.suppress(KeyboardInterrupt, Stopped), stop_on_sigterm():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("nmt: stopped", file=sys.stderr, flush=True)


class Stopped(Exception):
    """SIGTERM asked the server to stop."""


@contextlib.contextmanager
def stop_on_sigterm():
    """uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again for the
    handler it found: Python's for SIGINT (KeyboardInterrupt) and this one for SIGTERM, so both end
    in "nmt: stopped" and exit 0 instead of "aborted" (130) or a death by signal (143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
