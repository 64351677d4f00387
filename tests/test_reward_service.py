"""The reward service against bad, slow and concurrent clients: malformed or oversize requests are refused at
once, a client that stalls is dropped without holding anyone else, long responses are cut, concurrent requests
are scored together and as they would be one by one, and a wrong URL fails RL start-up in seconds."""

import json
import re
import socket
import threading
import time
import urllib.request
from contextlib import contextmanager

import pytest
from PIL import Image

from mimovl.data.synthetic import make_sample
from mimovl.errors import UsageError
from mimovl.model.build import build_tiny
from mimovl.model.reward import RewardModel
from mimovl.model.reward import RewardModelScorer
from mimovl.generate.score import HEALTH_TIMEOUT_S, build_router
from mimovl.rewards.client import HTTPRewardScorer, RewardServiceError, encode_sample
from mimovl.serve import Batcher, make_server
from mimovl.generate.prompts import to_prompt

CAP = 300  # characters of a response the test scorer reads


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    model, processor = build_tiny(seed=3)
    path = RewardModel(model, modality="vision").save(tmp_path_factory.mktemp("rm") / "hf", processor)
    return RewardModelScorer(path, batch_size=4, max_response_chars=CAP)


@contextmanager
def serving(scorer, **limits):
    server = make_server(scorer, port=0, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _prompts(n: int) -> list[dict]:
    """Prompts of preference samples (images and text), and their chosen answers."""
    prompts = [to_prompt(make_sample("preference", i, split="heldout")) for i in range(n)]
    return [p.sample for p in prompts], [p.sample["meta"]["chosen"] for p in prompts]


def _exchange(port: int, data: bytes, timeout: float = 10.0, close_write: bool = False) -> tuple[bytes, float]:
    """Send `data` on a new connection (then half-close it if `close_write`, else leave it open) and read the
    answer: the reply and the seconds it took to come whole (b"" when the server closed without one)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
    return reply, time.perf_counter() - start


def _status(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("header, code", [
    (b"Content-Length: -1\r\n", 400),
    (b"Content-Length: abc\r\n", 400),
    (b"Content-Length: 1e3\r\n", 400),
    (b"Content-Length: +10\r\n", 400),
    (b"Content-Length: 10\r\nContent-Length: 11\r\n", 400),
    (b"", 411),
    (b"Content-Length: 50000000\r\n", 413),  # 50 MB, over the 16 MiB default
    (b"Content-Length: " + b"9" * 40 + b"\r\n", 413),
], ids=["negative", "not-a-number", "float", "signed", "two-lengths", "missing", "50MB", "40-digits"])
def test_a_bad_content_length_is_refused_within_a_second(scorer, header, code):
    with serving(scorer) as (server, url):
        reply, seconds = _exchange(server.server_address[1], b"POST /score HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
        status, body = _status(reply)
        assert status == code and seconds < 1.0, (status, body, seconds)
        assert ("16777216 bytes" in body["error"]) == (code == 413)
        assert HTTPRewardScorer(url).health()["status"] == "ok"  # and it still serves


def test_a_stalled_client_is_dropped_and_holds_no_one(scorer):
    """A body shorter than its Content-Length, or headers never finished, hold only their own connection, until
    the socket timeout drops it; meanwhile another client is scored."""
    samples, responses = _prompts(2)
    expected = scorer.score(samples, responses)
    with serving(scorer, socket_timeout=1.0) as (server, url):
        port, results = server.server_address[1], {}

        def stall(name, data):
            results[name] = _exchange(port, data)

        stalls = [
            threading.Thread(target=stall, args=("short body", b"POST /score HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"
                                                 + b'{"samples"')),
            threading.Thread(target=stall, args=("headers", b"POST /score HTTP/1.1\r\nContent-Le")),
        ]
        for thread in stalls:
            thread.start()
        time.sleep(0.2)  # both are connected and stalled
        start = time.perf_counter()
        assert HTTPRewardScorer(url, timeout=30).score(samples, responses) == pytest.approx(expected, abs=1e-6)
        assert time.perf_counter() - start < 5.0 and not results  # scored while both still stall
        for thread in stalls:
            thread.join(timeout=10)
    short_reply, short_seconds = results["short body"]
    assert _status(short_reply)[0] == 408 and 0.9 < short_seconds < 3.0
    header_reply, header_seconds = results["headers"]
    assert header_reply == b"" and 0.9 < header_seconds < 3.0  # closed without an answer


def test_a_body_cut_short_is_refused(scorer):
    with serving(scorer) as (server, _):
        data = b"POST /score HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b'{"samples"'
        reply, seconds = _exchange(server.server_address[1], data, close_write=True)  # the client is done sending
    status, body = _status(reply)
    assert status == 400 and "after 10 of its 1000 bytes" in body["error"] and seconds < 1.0


def test_long_responses_are_scored_by_their_end_on_both_sides(scorer):
    samples, _ = _prompts(1)
    long = "x" * 5000 + " and so the answer is blue"
    tail = long[-CAP:]
    with serving(scorer) as (_, url):
        client = HTTPRewardScorer(url)
        raw = json.dumps({"samples": [encode_sample(samples[0])], "responses": [long]}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{url}/score", data=raw), timeout=30) as reply:
            server_cut = json.loads(reply.read())["scores"]  # sent whole: the service cuts it
        assert client.health()["max_response_chars"] == CAP and client.limits["max_response_chars"] == CAP
        client_cut = client.score(samples, [long])  # cut by the client before sending
    expected = scorer.score(samples, [tail])
    assert server_cut == pytest.approx(expected, abs=1e-6) and client_cut == pytest.approx(expected, abs=1e-6)
    assert scorer.score(samples, [long]) == expected
    uncut = RewardModelScorer(scorer.path, max_response_chars=None)
    assert uncut.score(samples, [tail]) == pytest.approx(expected, abs=1e-6)
    assert uncut.score(samples, [long[-CAP - 100 :]]) != pytest.approx(expected, abs=1e-6)  # the cut matters


def test_the_client_splits_its_pairs_to_fit_the_body_limit(scorer):
    samples, responses = _prompts(6)
    samples = [next(s for s in samples if s.get("images"))] * 6  # pairs of about the same size
    sizes = [len(json.dumps(encode_sample(s))) + len(json.dumps(r)) for s, r in zip(samples, responses)]
    limit = 2 * max(sizes) + 200  # two pairs fit, three do not
    assert 3 * min(sizes) > limit
    with serving(scorer, max_body_bytes=limit) as (server, url):
        client = HTTPRewardScorer(url)
        client.health()
        assert client.score(samples, responses) == pytest.approx(scorer.score(samples, responses), abs=1e-6)
        assert server.batcher.rounds == 3  # one request of two pairs per round
        with pytest.raises(RewardServiceError, match=r"HTTP 413.*--max-body-mb"):
            HTTPRewardScorer(url).score(samples, responses)  # not told the limit: sends all six, gets 413
        with pytest.raises(RewardServiceError, match="over the limit.*--max-body-mb"):
            noisy = {**samples[0], "images": [Image.effect_noise((64, 64), 80).convert("RGB")]}  # ~12 KB of PNG
            client.score([noisy], ["y"])  # one pair too large for any request: said before sending


def test_concurrent_requests_are_batched_and_score_as_one_by_one(scorer):
    samples, responses = _prompts(12)
    expected = scorer.score(samples, responses)
    requests = [(samples[:6], responses[:6])] + [(samples[i : i + 2], responses[i : i + 2]) for i in range(6, 12, 2)]
    requests += [([samples[i]], [responses[i]]) for i in range(6)]
    with serving(scorer) as (server, url):
        results = [None] * len(requests)

        def send(index):
            results[index] = HTTPRewardScorer(url, timeout=60).score(*requests[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        rounds = server.batcher.rounds
    assert results[0] == pytest.approx(expected[:6], abs=1e-5)
    assert [s for r in results[1:4] for s in r] == pytest.approx(expected[6:], abs=1e-5)
    assert [s for r in results[4:] for s in r] == pytest.approx(expected[:6], abs=1e-5)
    assert rounds < len(requests)  # some requests shared a round


def test_a_bad_request_in_a_round_fails_alone(scorer):
    samples, responses = _prompts(3)
    batcher = Batcher(scorer, max_pairs=64)
    try:
        futures = [batcher.submit(samples[:2], responses[:2]), batcher.submit([{"images": []}], ["x"]),
                   batcher.submit(samples[2:], responses[2:])]
        assert futures[0].result(timeout=60) + futures[2].result(timeout=60) == pytest.approx(
            scorer.score(samples, responses), abs=1e-5)
        with pytest.raises(ValueError, match="sample 0 has no 'messages'"):
            futures[1].result(timeout=60)
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(samples, responses)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_wrong_url_fails_start_up_in_seconds_naming_the_key():
    assert 2.0 <= HEALTH_TIMEOUT_S <= 5.0
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"reward\.models\.vision\.url=" + re.escape(url)) as error:
        build_router({"vision": {"path": None, "url": url}})
    assert time.perf_counter() - start < 5.0
    assert "python -m mimovl.serve" in str(error.value) and "set it to null" in str(error.value)


def test_a_url_that_never_answers_fails_at_the_health_timeout():
    with socket.socket() as silent:  # listens (connections are accepted by the kernel), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(UsageError, match=r"reward\.models\.text\.url"):
            build_router({"text": {"url": url}}, health_timeout=1.0)
        assert 0.9 < time.perf_counter() - start < 3.0


def test_start_up_checks_the_service_and_learns_its_limits(scorer, tmp_path):
    samples, responses = _prompts(2)
    with serving(scorer, max_body_bytes=10**6) as (_, url):
        router = build_router({"vision": {"url": url}, "text": {"url": url}})
        assert router.models["vision"].limits == {"max_body_bytes": 10**6, "max_response_chars": CAP}
        assert router.models["vision"].score(samples, responses) == pytest.approx(
            scorer.score(samples, responses), abs=1e-6)
    model, processor = build_tiny(seed=4)
    text_rm = RewardModelScorer(RewardModel(model, modality="text").save(tmp_path / "hf", processor))
    with serving(text_rm) as (_, url):
        text = build_router({"text": {"url": url}}).models["text"]  # a text model for text: fine
        assert text.limits == {"max_body_bytes": 16 * 2**20, "max_response_chars": 8192}
        with pytest.raises(UsageError, match=r"reward\.models\.vision\.url=.*text-only.*stage=rm"):
            build_router({"vision": {"url": url}})
