"""``nmt serve``: a trained translation run behind an HTTP JSON API, batching concurrent requests.

One request goes through three steps:

1. its handler (on the event loop) reads the body up to a byte cap, checks every field against the
   bounds of the ``nmt translate`` option of the same name, encodes the sentences and refuses a request
   that asks the search for more than :data:`MAX_SEARCH_TOKENS` or :data:`MAX_SEARCH_PAIRS`;
2. it joins the queue of the :class:`~nmt.serve_batcher.Batcher` as a job, which the one collector task
   batches with the jobs that arrive within a few milliseconds of it;
3. the one model thread searches them and the handler answers with its own hypotheses; a client that
   leaves withdraws its job (:mod:`nmt.serve_batcher` says how, and why one thread).

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
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from nmt import search
from nmt.alignment import EOS_PIECE
from nmt.data.buckets import BUDGET_BEAM
from nmt.errors import RequestError, UserError, shorten
from nmt.serve_batcher import BATCH_WAIT_S, Batcher, ModelError, SearchOptions
from nmt.serve_page import PAGE
from nmt.translate import compile_decoder, encode_lines, translate_lines

MAX_BODY_BYTES = 1 << 20  # 1 MiB: thousands of sentences; a bigger body is refused before it is held
MAX_SENTENCES = 1000  # per request: one request must not hold the model for everyone else for minutes
# Per request, the most target tokens its search may produce, counted before it is queued: for each sentence,
# beam x its length cap (max_length_ratio x source tokens + 10, as nmt.search). The defaults pass 1,000
# sentences of up to 95 tokens; beam 100 at ratio 10, 19 sentences of 50. Over it: 413.
MAX_SEARCH_TOKENS = 1_000_000
# Per request, the most (target token, source token) pairs its search's attention may score: for each
# sentence, beam x its length cap x its source tokens. The target-token cap alone let one sentence of
# 100,000 source tokens through at beam 100 and ratio 0.1 (hours of search, tens of GB for the beams'
# copies of its source); this bounds the time in the source's length as well. The defaults still pass
# 1,000 sentences of up to 95 tokens (95,000,000 pairs), beam 100 at ratio 10 19 sentences of 50. Over it: 413.
MAX_SEARCH_PAIRS = 100_000_000
STOP_WAIT_S = 5.0  # at shutdown, how long the model thread is given to reach its next step (it is a daemon)
DEFAULTS = {"beam": 5, "nbest": 1, "alpha": 0.6, "max_length_ratio": 2.0}
OPTIONS = (*DEFAULTS, "max_input_tokens")  # named as the nmt translate options, with _ for -
# Searched once at start under --compile, so that no request waits for the compiler: one sentence
# greedily (a batch of one row, which Dynamo compiles apart: it specialises sizes of 1), two at beam 2
# (several rows, the one graph dynamic in them).
WARM_UP = ("warm up", "the compiled step is ready")
FLAGS = ("attention",)  # JSON true/false: "attention" returns each hypothesis's weights and the pieces they cover


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
        try:  # JSON may escape half a surrogate pair ("\ud800"): Python holds it, no tokenizer takes it
            sentence.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(422, f"sentences[{i}]", f"not valid Unicode: a lone surrogate "
                                                      f"({ascii(sentence[exc.start])[1:-1]}) at character {exc.start}") from None
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
    return JSONResponse({"error": f"nmt: {shorten(printable(line), 400)}", "field": where and printable(where)},
                        status_code=status)


def printable(text: str) -> str:
    """``text`` with any lone surrogate (from a JSON key such as ``"\\ud800"``) escaped: UTF-8 can hold it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def search_work(encoded: list[list[int]], options: SearchOptions) -> tuple[int, int]:
    """The most a search of ``encoded`` may do: (target tokens, beam x each sentence's length cap, summed;
    and the (target, source) token pairs its attention scores, each of those tokens times its source's length)."""
    caps = [(options.beam * (int(len(ids) * options.max_length_ratio) + 10), len(ids)) for ids in encoded if ids]
    return sum(tokens for tokens, _ in caps), sum(tokens * length for tokens, length in caps)


def check_search_work(encoded: list[list[int]], options: SearchOptions, max_tokens: int, max_pairs: int,
                      batch_tokens: int) -> None:
    """Refuses (413) a request whose search may do more than ``max_tokens`` or ``max_pairs``, or one of whose
    sentences alone, copied once per beam, would outgrow a model batch (``batch_tokens x BUDGET_BEAM`` hypothesis
    tokens, what ``--batch-size`` bounds the search's memory by). Checked before it is queued, so the same
    request gets the same answer under any load."""
    tokens, pairs = search_work(encoded, options)
    caps = (f"{len(encoded)} sentence{'s' if len(encoded) != 1 else ''}, beam {options.beam} x each one's length "
            f"cap of max_length_ratio {options.max_length_ratio:g} x its tokens + 10")
    advice = "send fewer or shorter sentences, or a lower beam or max_length_ratio"
    if tokens > max_tokens:
        raise RequestError(413, "request", f"asks the search for up to {tokens:,} target tokens ({caps}), "
                                           f"more than the {max_tokens:,} one request may; {advice}")
    if pairs > max_pairs:
        raise RequestError(413, "request", f"asks the attention for up to {pairs:,} target-source token pairs ({caps}, "
                                           f"times its source tokens), more than the {max_pairs:,} one request may; {advice}")
    width, budget = max(options.beam, BUDGET_BEAM), batch_tokens * BUDGET_BEAM
    for i, ids in enumerate(encoded):
        if len(ids) * width > budget:
            raise RequestError(413, f"sentences[{i}]", f"{len(ids):,} tokens x beam {width} = {len(ids) * width:,} "
                                                       f"hypothesis tokens, more than one model batch holds "
                                                       f"({budget:,}: --batch-size {batch_tokens:,} x {BUDGET_BEAM}); "
                                                       f"send a shorter sentence or use a lower beam")


async def disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (called after the body has been read whole)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- the app -----------------------------------------------------------------------------------

def create_app(task, run_name: str, batch_tokens: int = 4000, wait_s: float = BATCH_WAIT_S,
               max_body_bytes: int = MAX_BODY_BYTES, max_sentences: int = MAX_SENTENCES,
               max_search_tokens: int = MAX_SEARCH_TOKENS, max_search_pairs: int = MAX_SEARCH_PAIRS) -> Starlette:
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
            check_search_work(encoded, options, max_search_tokens, max_search_pairs, batch_tokens)
            results = await batcher.submit(sentences, encoded, options, disconnected(request))
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
                                        "max_input_tokens": default_max_tokens, "batch_tokens": batch_tokens,
                                        "max_search_tokens": max_search_tokens,
                                        "max_search_pairs": max_search_pairs}})

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
            app.state.batcher.stop(STOP_WAIT_S)

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
            stopping_server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("nmt: stopped", file=sys.stderr, flush=True)


class Stopped(Exception):
    """SIGTERM asked the server to stop."""


def stopping_server(config):
    """A uvicorn server for ``config`` (of an app of :func:`create_app`) whose shutdown first stops the
    batcher: uvicorn waits for every request in flight before the app's own shutdown, and a request
    waiting for a long search would hold it for minutes. Stopped, each is answered 503 at once, and the
    search ends at its next step."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            batcher = getattr(self.config.app.state, "batcher", None)
            if batcher is not None:
                batcher.stop()
            await super().shutdown(sockets=sockets)

    return StoppingServer(config)


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
