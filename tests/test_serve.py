"""``nmt serve``: a real server on a free loopback port, talked to with a real HTTP client (httpx).

The server runs uvicorn in a thread of this process (the model thread and the collector are the
production ones); one test starts ``nmt serve`` as a child process, one drives the page in headless
Chromium (skipped where Debian's chromium and chromium-driver are not installed).
"""
from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from reliability_support import NMT, reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt.runs import load_run  # noqa: E402
from nmt.serve import compile_search, create_app, listen  # noqa: E402

LINES = ["a0 b1 c2 d3", "f3 e2", "", "c1 c1 d2 a3 b0 e1 f2", "b2"]
MAX_SENTENCES = 20
MAX_BODY = 4096
MAX_SEARCH = 20_000
MAX_PAIRS = 2_000_000


class ServerThread:
    """uvicorn serving ``app`` from a thread, on a port the kernel picked."""

    def __init__(self, app):
        self.app = app
        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def server(trained_run):
    task = load_run(trained_run, device="cpu")
    # A 20 ms window: requests sent together join one batch even on a busy two-core machine.
    app = create_app(task, "run", wait_s=0.02, max_body_bytes=MAX_BODY, max_sentences=MAX_SENTENCES,
                     max_search_tokens=MAX_SEARCH, max_search_pairs=MAX_PAIRS)
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def cli_translate(capsys, tmp_path, run, lines, *options) -> list[str]:
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines))
    code, out, err = run_cli(capsys, "translate", "--run", run, "-i", tmp_path / "in.txt", "--device", "cpu", *options)
    assert code == 0, err
    return out.splitlines()


# --- answers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("beam", [1, 3])
def test_translations_equal_nmt_translate(client, trained_run, capsys, tmp_path, beam):
    expected = cli_translate(capsys, tmp_path, trained_run, LINES, "--beam", str(beam))
    response = client.post("/translate", json={"sentences": LINES, "beam": beam})
    assert response.status_code == 200, response.text
    got = response.json()["translations"]
    assert [t["translation"] for t in got] == expected
    assert got[2] == {"translation": "", "score": None, "log_prob": None, "cut": False, "hypotheses": []}


def test_a_compiled_server_answers_as_the_eager_one_and_no_request_waits_for_the_compiler(client, trained_run,
                                                                                           one_thread):
    torch._dynamo.reset()
    counters.clear()
    task = load_run(trained_run, device="cpu")
    app = create_app(task, "run", wait_s=0.02)
    compile_search(task, trained_run, 4000)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1  # the warm-up compiled the step
    bodies = [{"sentences": LINES[:1], "beam": 1}, {"sentences": LINES, "beam": 1}, {"sentences": LINES[:1], "beam": 5},
              {"sentences": LINES, "beam": 4, "nbest": 3}, {"sentences": LINES[3:], "beam": 2, "attention": True}]
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as compiled_client:
        for body in bodies:
            answers = [c.post("/translate", json=body) for c in (client, compiled_client)]
            assert [a.status_code for a in answers] == [200, 200], answers[1].text
            eager, ours = ([[h["translation"] for h in t["hypotheses"]] for t in a.json()["translations"]] for a in answers)
            assert ours == eager and any(eager), body
    assert counters["stats"]["unique_graphs"] == compiled  # no request compiled anything more


def test_nbest_equals_nmt_translate_nbest(client, trained_run, capsys, tmp_path):
    from nmt.translate import format_score

    expected = cli_translate(capsys, tmp_path, trained_run, LINES, "--beam", "4", "--nbest", "3", "--alpha", "1.0")
    got = client.post("/translate", json={"sentences": LINES, "beam": 4, "nbest": 3, "alpha": 1.0}).json()
    ours = []
    for i, t in enumerate(got["translations"]):
        # nmt translate writes exactly --nbest entries a line: an empty line's are empty (score 0),
        # a short list is padded with empty ones scored -inf; the API returns what the search found
        filler = {"translation": "", "score": 0.0 if not t["hypotheses"] else float("-inf")}
        entries = t["hypotheses"] + [filler] * (3 - len(t["hypotheses"]))
        ours += [f"{i} ||| {h['translation']} ||| {format_score(float('-inf') if h['score'] is None else h['score'])}"
                 for h in entries]
    assert ours == expected


def test_attention_has_a_row_per_target_piece_and_a_column_per_source_piece(client):
    plain = client.post("/translate", json={"sentences": LINES, "beam": 3, "nbest": 2}).json()["translations"]
    got = client.post("/translate", json={"sentences": LINES, "beam": 3, "nbest": 2,
                                          "attention": True}).json()["translations"]
    assert [t["translation"] for t in got] == [t["translation"] for t in plain]  # asking changes no answer
    assert "attention" not in plain[0] and "source_pieces" not in plain[0]
    for line, t in zip(LINES, got):
        assert t["source_pieces"] == line.split()  # the whitespace tokenizer: a piece per word
        for h in t["hypotheses"]:
            pieces = h["translation"].split()
            assert h["target_pieces"] in (pieces, pieces + ["</s>"])  # + EOS unless it hit the length cap
            weights = h["attention"]
            assert len(weights) == len(h["target_pieces"])
            assert all(len(row) == len(line.split()) for row in weights)
            assert all(abs(sum(row) - 1) < 1e-4 for row in weights)  # a distribution over the source
    assert got[2]["source_pieces"] == [] and got[2]["hypotheses"] == []  # the empty line


def test_long_sentence_is_cut_to_max_input_tokens(client):
    got = client.post("/translate", json={"sentences": ["a0 b1 c2 d3 e0 f1", "a0 b1"], "max_input_tokens": 2,
                                          "beam": 1}).json()["translations"]
    assert [t["cut"] for t in got] == [True, False]
    assert got[0]["translation"] == got[1]["translation"]  # both are "a0 b1" to the model


def test_health_names_the_run(client):
    health = client.get("/health").json()
    assert health["ok"] is True and health["model_loaded"] is True
    assert health["run"] == "run" and health["device"] == "cpu"
    assert set(health["stats"]) >= {"requests", "sentences", "batches"}


def test_concurrent_requests_share_model_batches(server, client):
    sentences = [f"a{i % 4} b{i % 3} c{i % 2} d{(i * 7) % 4} e{i % 4}" for i in range(16)]
    alone = {s: client.post("/translate", json={"sentences": [s]}).json()["translations"][0]["translation"]
             for s in sentences}

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            return await asyncio.gather(*[c.post("/translate", json={"sentences": [s]}) for s in sentences])

    before = client.get("/health").json()["stats"]
    responses = asyncio.run(together())
    after = client.get("/health").json()["stats"]
    assert [r.status_code for r in responses] == [200] * len(sentences)
    # each answer is its own request's, not a neighbour's from the same batch
    assert [r.json()["translations"][0]["translation"] for r in responses] == [alone[s] for s in sentences]
    assert after["requests"] - before["requests"] == len(sentences)
    batches = after["batches"] - before["batches"]
    assert 1 <= batches < len(sentences), after
    assert after["largest_batch_requests"] > 1


# --- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, field, words", [
    (b'{"sentences": ["a0"', 400, "request", "not valid JSON"),
    (b"\xff\xfe{", 400, "request", "not valid JSON"),
    (b"[" * 2000 + b"]" * 2000, 400, "request", "not valid JSON"),
    (b'["a0"]', 422, "request", "expected a JSON object"),
    (b'{"beam": 2}', 422, "sentences", "required"),
    (b'{"sentences": "a0 b1"}', 422, "sentences", "a list of strings"),
    (b'{"sentences": ["a0", 5]}', 422, "sentences[1]", "expected a string"),
    (b'{"sentences": ["a0", "b1 \\ud800"]}', 422, "sentences[1]", "not valid Unicode: a lone surrogate (\\ud800) at character 3"),
    (b'{"sentences": ["\\udc00"]}', 422, "sentences[0]", "lone surrogate"),
    (b'{"sentences": ["a0"], "\\ud800": 1}', 422, "\\ud800", "unknown field"),
    (b'{"sentences": ["a0"], "beem": 3}', 422, "beem", "did you mean 'beam'"),
    (b'{"sentences": ["a0"], "beam": 0}', 422, "beam", "expected at least 1"),
    (b'{"sentences": ["a0"], "beam": 101}', 422, "beam", "expected at most 100"),
    (b'{"sentences": ["a0"], "beam": "5"}', 422, "beam", "expected an integer"),
    (b'{"sentences": ["a0"], "beam": 2.5}', 422, "beam", "expected an integer"),
    (b'{"sentences": ["a0"], "nbest": true}', 422, "nbest", "expected an integer"),
    (b'{"sentences": ["a0"], "beam": 2, "nbest": 3}', 422, "nbest", "must not exceed beam"),
    (b'{"sentences": ["a0"], "alpha": NaN}', 422, "alpha", "finite"),
    (b'{"sentences": ["a0"], "alpha": -1}', 422, "alpha", "at least 0"),
    (b'{"sentences": ["a0"], "max_length_ratio": Infinity}', 422, "max_length_ratio", "finite"),
    (b'{"sentences": ["a0"], "max_length_ratio": 0.01}', 422, "max_length_ratio", "at least 0.1"),
    (b'{"sentences": ["a0"], "max_length_ratio": 11}', 422, "max_length_ratio", "at most 10"),
    (b'{"sentences": ["a0"], "max_input_tokens": 0}', 422, "max_input_tokens", "at least 1"),
    (b'{"sentences": ["a0"], "max_input_tokens": 100001}', 422, "max_input_tokens", "at most 100000"),
    (b'{"sentences": ["a0"], "attention": "yes"}', 422, "attention", "expected true or false"),
    (b'{"sentences": ["a0"], "attention": 1}', 422, "attention", "expected true or false"),
    (b'{"sentences": ["a0"], "attentoin": true}', 422, "attentoin", "did you mean 'attention'"),
])
def test_bad_requests_get_one_json_line_naming_the_field(client, body, status, field, words):
    response = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"nmt: {field}: ") and words in error["error"], error
    assert "\n" not in error["error"]


def test_oversized_requests_get_413_and_the_server_lives_on(client):
    too_many = client.post("/translate", json={"sentences": ["a0"] * (MAX_SENTENCES + 1)})
    assert too_many.status_code == 413 and too_many.json()["field"] == "sentences"
    declared = client.post("/translate", content=b" " * (MAX_BODY * 50))
    assert declared.status_code == 413 and "over the limit" in declared.json()["error"]
    streamed = client.post("/translate", content=iter([b" " * 1000] * 50))  # chunked: no Content-Length
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
    assert client.post("/translate", json={"sentences": ["a0 b1"]}).status_code == 200


def test_a_request_asking_the_search_for_more_than_the_cap_is_413_and_not_queued(client):
    sentence = "a0 b1 c2 d3"  # 4 tokens: at beam 100 and ratio 10, up to 100 x (40 + 10) = 5,000 target tokens
    before = client.get("/health").json()["stats"]["requests"]
    over = client.post("/translate", json={"sentences": [sentence] * 5, "beam": 100, "max_length_ratio": 10})
    assert over.status_code == 413, over.text
    assert over.json()["field"] == "request"
    assert over.json()["error"].startswith("nmt: request: asks the search for up to 25,000 target tokens (5 sentences")
    assert f"more than the {MAX_SEARCH:,} one request may" in over.json()["error"]
    assert client.get("/health").json()["stats"]["requests"] == before  # refused before it was queued
    at_cap = client.post("/translate", json={"sentences": [sentence] * 4 + [""], "beam": 100, "max_length_ratio": 10})
    assert at_cap.status_code == 200, at_cap.text  # 20,000: the cap itself is allowed; an empty line costs nothing
    assert client.get("/health").json()["limits"]["max_search_tokens"] == MAX_SEARCH


def test_a_long_sentence_whose_attention_would_pass_the_cap_is_413_though_its_target_tokens_do_not(client):
    # 300 source tokens at beam 100 and ratio 0.5: 100 x (150 + 10) = 16,000 target tokens (under 20,000),
    # each scoring 300 source tokens: 4,800,000 pairs, over 2,000,000. The target-token cap let it through.
    long = " ".join(["c0"] * 300)
    before = client.get("/health").json()["stats"]["requests"]
    over = client.post("/translate", json={"sentences": [long], "beam": 100, "max_length_ratio": 0.5,
                                           "max_input_tokens": 300})
    assert over.status_code == 413, over.text
    assert over.json()["field"] == "request"
    assert over.json()["error"].startswith("nmt: request: asks the attention for up to 4,800,000 target-source "
                                           "token pairs (1 sentence, beam 100"), over.json()
    assert f"more than the {MAX_PAIRS:,} one request may" in over.json()["error"]
    assert client.get("/health").json()["stats"]["requests"] == before  # refused before it was queued
    lower_beam = client.post("/translate", json={"sentences": [long], "beam": 10, "max_length_ratio": 0.5,
                                                 "max_input_tokens": 300})
    assert lower_beam.status_code == 200, lower_beam.text  # 1,600 x 300 = 480,000 pairs
    assert client.get("/health").json()["limits"]["max_search_pairs"] == MAX_PAIRS


def test_a_sentence_whose_beams_outgrow_a_model_batch_is_413_naming_it(client):
    # 210 tokens x beam 100 = 21,000 hypothesis tokens, over one model batch (4,000 x 5 = 20,000): the search
    # would hold them at once whatever --batch-size says. Under both other caps (3,100 + 1,000 target tokens;
    # about 652,000 pairs).
    long = " ".join(["c0"] * 210)
    over = client.post("/translate", json={"sentences": ["a0", long], "beam": 100, "max_length_ratio": 0.1,
                                           "max_input_tokens": 300})
    assert over.status_code == 413, over.text
    assert over.json()["field"] == "sentences[1]"
    assert over.json()["error"] == ("nmt: sentences[1]: 210 tokens x beam 100 = 21,000 hypothesis tokens, more than "
                                    "one model batch holds (20,000: --batch-size 4,000 x 5); send a shorter sentence "
                                    "or use a lower beam")
    assert client.post("/translate", json={"sentences": ["a0", long], "beam": 50, "max_length_ratio": 0.1,
                                           "max_input_tokens": 300}).status_code == 200


def test_unknown_path_and_method_are_json_errors(client):
    assert client.get("/nowhere").status_code == 404
    assert client.get("/nowhere").json()["error"] == "nmt: /nowhere: Not Found"
    assert client.get("/translate").status_code == 405


def test_model_error_is_a_500_with_one_line_and_the_next_request_works(server, client):
    batcher = server.app.state.batcher

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    working, batcher.translate = batcher.translate, broken
    try:
        response = client.post("/translate", json={"sentences": ["a0 b1"]})
    finally:
        batcher.translate = working
    assert response.status_code == 500
    assert response.json()["error"] == "nmt: model: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert client.post("/translate", json={"sentences": ["a0 b1"]}).status_code == 200
    assert client.get("/health").json()["stats"]["model_errors"] >= 1


# --- clients that leave ------------------------------------------------------------------------------

class Gated:
    """``translate_lines`` that records the sentences it is given, and holds a call with a sentence of
    ``hold(sentence)`` until ``release(sentence)``."""

    def __init__(self, real):
        self.real, self.seen, self.entered, self.gates = real, [], {}, {}

    def hold(self, sentence: str) -> None:
        self.entered[sentence], self.gates[sentence] = threading.Event(), threading.Event()

    def release(self, sentence: str) -> None:
        self.gates[sentence].set()

    def __call__(self, task, sentences, *args, **kwargs):
        self.seen += sentences
        for sentence in sentences:
            if sentence in self.gates:
                self.entered[sentence].set()
                self.gates[sentence].wait(120)
        return self.real(task, sentences, *args, **kwargs)


def post_and_stay(url: str, body: dict) -> socket.socket:
    """A client that sends ``POST /translate`` and does not read the answer: closing the socket leaves."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def wait_for(client, condition, what: str) -> None:
    """Until ``condition(/health)`` holds (a deadline only against a hang, not a timing assertion)."""
    deadline = time.monotonic() + 60
    while not condition(health := client.get("/health").json()):
        assert time.monotonic() < deadline, f"{what}: {health}"
        time.sleep(0.02)


@pytest.fixture
def gated(server):
    batcher = server.app.state.batcher
    batcher.translate = gate = Gated(batcher.translate)
    try:
        yield gate
    finally:
        batcher.translate = gate.real
        for event in gate.gates.values():
            event.set()


def test_a_queued_request_whose_client_left_is_dropped_unsearched(server, client, gated):
    busy, left = "a0 a0 a0", "b1 c2 d3 e0"
    gated.hold(busy)
    before = client.get("/health").json()["stats"]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, server.url + "/translate", json={"sentences": [busy]}, timeout=120)
        assert gated.entered[busy].wait(60)  # the model is busy with the first request
        sock = post_and_stay(server.url, {"sentences": [left, left]})
        wait_for(client, lambda h: h["pending_sentences"] == 3, "the second request queued")
        sock.close()
        wait_for(client, lambda h: h["pending_sentences"] == 1, "the second request dropped when its client left")
        gated.release(busy)
        assert first.result().status_code == 200
    assert client.post("/translate", json={"sentences": ["f1"]}).status_code == 200  # the collector went past it
    assert left not in gated.seen
    assert client.get("/health").json()["stats"]["abandoned_requests"] == before["abandoned_requests"] + 1


def test_a_model_batch_whose_only_client_left_is_skipped(server, client, gated):
    # A and B join one collector batch (same options) while the model is busy; A's short sentence and
    # B's 150 tokens at beam 100 overflow one model batch (4000 x 5 hypothesis tokens), so the model
    # searches A's batch first, then B's: B leaves during A's, and B's is never searched.
    busy, short, long = "a0 a0 a0", "a1 b2", " ".join(["c0"] * 150)
    options = {"beam": 100, "max_length_ratio": 0.1, "max_input_tokens": 150}
    gated.hold(busy)
    gated.hold(short)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, server.url + "/translate", json={"sentences": [busy]}, timeout=120)
        assert gated.entered[busy].wait(60)
        a = pool.submit(httpx.post, server.url + "/translate", json={"sentences": [short], **options}, timeout=120)
        sock = post_and_stay(server.url, {"sentences": [long], **options})
        wait_for(client, lambda h: h["pending_sentences"] == 3, "A and B queued")
        gated.release(busy)
        assert gated.entered[short].wait(60)  # A's model batch, with B's still to come
        sock.close()
        wait_for(client, lambda h: h["pending_sentences"] == 1, "B withdrawn when its client left")
        gated.release(short)
        assert first.result().status_code == 200 and a.result().status_code == 200
    assert short in gated.seen and long not in gated.seen


def test_a_search_whose_client_left_ends_at_its_next_step(server, client):
    batcher = server.app.state.batcher
    real, entered, endless_sentence = batcher.translate, threading.Event(), "e0 e1 e2"

    def endless(task, sentences, beam, nbest, alpha, batch_tokens, ratio, encoded, **kwargs):
        if sentences != [endless_sentence]:
            return real(task, sentences, beam, nbest, alpha, batch_tokens, ratio, encoded, **kwargs)
        memory, state = task.encode(torch.tensor(encoded), torch.tensor([len(encoded[0])]))
        prev = torch.full((1,), task.bos_id, dtype=torch.long)
        entered.set()
        while True:  # a search that never ends by itself
            task.decode_step(prev, state, memory)

    before = client.get("/health").json()["stats"]["abandoned_model_batches"]
    batcher.translate = endless
    try:
        sock = post_and_stay(server.url, {"sentences": [endless_sentence], "beam": 1})
        assert entered.wait(60)
        sock.close()
        # the model thread is free again: the next request is answered (before: it waited forever)
        answer = client.post("/translate", json={"sentences": ["a0 b1"], "beam": 1})
        assert answer.status_code == 200 and answer.json()["translations"][0]["translation"]
    finally:
        batcher.translate = real
    assert client.get("/health").json()["stats"]["abandoned_model_batches"] == before + 1


# --- the command -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop, extra", [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGTERM, ["--compile"])],
                         ids=["SIGINT", "SIGTERM", "compiled"])
def test_nmt_serve_answers_until_stopped(trained_run, stop, extra):
    proc = subprocess.Popen([*NMT, "serve", "--run", str(trained_run), "--port", "0", "--device", "cpu", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seen = []
        for line in proc.stderr:  # "nmt: serving RUN on http://127.0.0.1:PORT/", once the model is loaded
            seen.append(line)
            if match := re.search(r"on (http://127\.0\.0\.1:\d+)/", line):
                break
        assert match, "".join(seen)[-2000:]
        url = match.group(1)
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["ok"] is True and health["compiled"] is bool(extra)
        answer = httpx.post(url + "/translate", json={"sentences": ["a0 b1"], "beam": 2}, timeout=60)
        assert answer.status_code == 200 and answer.json()["translations"][0]["translation"]
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read().strip().splitlines()[-1] == "nmt: stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# nmt serve, with every search made endless: it searches until told to stop
ENDLESS_SEARCH = """
import runpy, sys, torch
import nmt.search

def endless(model, src, src_len, *args, **kwargs):
    memory, state = model.encode(src, src_len)
    prev = torch.full((src.size(0),), model.bos_id, dtype=torch.long)
    print("test: searching", file=sys.stderr, flush=True)
    while True:
        model.decode_step(prev, state, memory)

nmt.search.greedy_search = nmt.search.beam_search = endless
sys.argv = ["nmt", *sys.argv[1:]]
runpy.run_module("nmt.cli", run_name="__main__")
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_nmt_serve_in_the_middle_of_a_search(trained_run, stop):
    proc = subprocess.Popen([sys.executable, "-c", ENDLESS_SEARCH, "serve", "--run", str(trained_run), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if match := re.search(r"on (http://127\.0\.0\.1:\d+)/", line):
                break
        assert match, "".join(seen)[-2000:]
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, match.group(1) + "/translate", json={"sentences": ["a0 b1"]}, timeout=120)
            for line in proc.stderr:
                seen.append(line)
                if line.startswith("test: searching"):
                    break
            proc.send_signal(stop)
            assert proc.wait(timeout=60) == 0  # before: "nmt: stopped", then the search ran on and on
            assert answer.result().status_code == 503
            assert answer.result().json()["error"] == "nmt: server: shutting down"
        err = "".join(seen) + proc.stderr.read()
        assert err.strip().splitlines()[-1] == "nmt: stopped"
        assert "Traceback" not in err and "Error" not in err, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_compile_where_it_cannot_apply_is_one_line_before_serving(trained_run, capsys, monkeypatch):
    monkeypatch.setattr(importlib.import_module("nmt_builtin.rnn_decoder").RNNDecoder, "compile_step", None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: None)  # were it to serve, it stops at once
    code, out, err = run_cli(capsys, "serve", "--run", trained_run, "--port", "0", "--device", "cpu", "--compile")
    assert code == 2, err
    assert err.strip().startswith("nmt: --compile: the decoder of ") and err.strip().endswith("has no compile_step; leave out --compile")


def test_port_in_use_is_one_line(trained_run, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", "--run", trained_run, "--port", port, "--device", "cpu")
    assert code == 2
    assert err.strip() == f"nmt: --port: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_missing_run_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, "serve", "--run", tmp_path / "none", "--port", "0")
    assert code == 2 and err.strip().endswith("not a run directory (no run.json); train one with nmt train")


# --- the page --------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_translates_a_typed_sentence(server, client, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = client.post("/translate", json={"sentences": ["a0 b1 c2"], "beam": 5,
                                               "attention": True}).json()["translations"][0]
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "run").text)  # /health answered
    assert "run run on cpu" in browser.find_element(By.ID, "run").text
    browser.find_element(By.ID, "source").send_keys("a0 b1 c2")
    browser.find_element(By.ID, "translate").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "output").text)
    assert browser.find_element(By.ID, "output").text == expected["translation"]
    assert browser.find_element(By.ID, "score").text == f"score {expected['score']:.4f}"
    # the heatmap: a header of source pieces, then a row per target piece with a cell per source piece
    heatmap = browser.find_element(By.ID, "attention")
    assert heatmap.is_displayed()
    rows = heatmap.find_elements(By.TAG_NAME, "tr")
    assert [th.text for th in rows[0].find_elements(By.TAG_NAME, "th")] == ["", "a0", "b1", "c2"]
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows[1:]] == expected["hypotheses"][0]["target_pieces"]
    cells = [[float(td.get_attribute("title")) for td in r.find_elements(By.TAG_NAME, "td")] for r in rows[1:]]
    weights = expected["hypotheses"][0]["attention"]
    assert [len(row) for row in cells] == [len(row) for row in weights]
    assert all(abs(c - w) <= 0.0006 for crow, wrow in zip(cells, weights) for c, w in zip(crow, wrow))  # shown to 3 places
    # self-contained: every resource the page loaded came from the server itself
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(server.url) for name in resources), resources

    browser.find_element(By.ID, "beam").clear()
    browser.find_element(By.ID, "beam").send_keys("500")
    browser.find_element(By.ID, "translate").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "nmt: beam: expected at most 100, got 500"
    assert not browser.find_element(By.ID, "attention").is_displayed()  # no stale heatmap beside an error
