"""Reward-as-a-Service: one reward model served over HTTP to any number of RL workers.

    python -m mimovl.serve --model outputs/mimovl/rm/hf [--host 127.0.0.1] [--port 8000] [--device cpu]

    GET  /health -> {"status": "ok", "model": DIR, "modality": "vision" | "text",
                     "max_body_bytes": int, "max_response_chars": int}
    POST /score  {"samples": [...], "responses": [...]} -> {"scores": [float in [0, 1], ...]}

On the wire a sample is a schema prompt (`mimovl.model.reward`) with each image a base64 PNG string and
each video {"frames": [base64 PNG], "timestamps": [...], "fps": ...} (`encode_sample` / `decode_sample`).
A bad request gets 400 {"error": ...}; a failure while scoring 500 {"error": ...}. `--port 0` picks a free
port; the service prints its URL once it accepts requests.

What one client cannot do to the others: a body over --max-body-mb (16 MiB) is refused with 413, a missing
Content-Length with 411 and a malformed or negative one with 400, before any of the body is read; a
connection silent for --socket-timeout (10 s), e.g. a body shorter than its Content-Length, gets 408 and is
closed; a response is scored by its last --max-response-chars (8192) characters, and HTTPRewardScorer cuts it
the same way before sending. Each connection has its own thread; one scoring thread scores the requests
waiting together, up to --max-batch (64) pairs a round (`Batcher`): a request waits for the round in progress,
then shares the next one, instead of queueing on a lock behind every request before it.
Its client is `mimovl.rewards.client.HTTPRewardScorer`, which keeps to the limits /health reports.
"""

from __future__ import annotations

import argparse
import binascii
import collections
import json
import logging
import socket
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mimovl.model.reward import RewardModelScorer
from mimovl.rewards.client import MAX_BODY_BYTES, decode_sample
from mimovl.rewards.parse import MAX_RESPONSE_CHARS

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 10.0  # a connection silent this long (a body shorter than its Content-Length) is dropped
MAX_BATCH_PAIRS = 64  # (sample, response) pairs scored in one round, from whichever requests are waiting
LINGER_S = 2.0  # after refusing a request, how long the rest of its body is read and dropped


class _Job:
    def __init__(self, samples: list[dict], responses: list[str]):
        self.samples, self.responses, self.future = samples, responses, Future()


class Batcher:
    """Scores requests together: one thread takes every request waiting (whole, up to `max_pairs` pairs, or
    one larger request alone) and scores them in one `scorer.score` call, so concurrent clients share forwards
    instead of queueing on a lock one request at a time. When a round fails, its requests are scored one by
    one, so a bad request fails alone.

        future = batcher.submit(samples, responses)   # future.result(): the scores, or the scorer's exception
    """

    def __init__(self, scorer, max_pairs: int = 64):
        self.scorer, self.max_pairs = scorer, max_pairs
        self.rounds = 0  # scoring rounds run (fewer than requests when requests were batched)
        self._waiting: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="reward-scoring", daemon=True)
        self._thread.start()

    def submit(self, samples: list[dict], responses: list[str]) -> Future:
        job = _Job(samples, responses)
        with self._ready:
            if self._closed:
                raise RuntimeError("the reward service is shutting down")
            self._waiting.append(job)
            self._ready.notify()
        return job.future

    def close(self) -> None:
        """Stop after the requests already waiting."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if not self._waiting:
                    return
                jobs, pairs = [], 0
                while self._waiting and (not jobs or pairs + len(self._waiting[0].samples) <= self.max_pairs):
                    jobs.append(self._waiting.popleft())
                    pairs += len(jobs[-1].samples)
            self.rounds += 1
            self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        try:
            scores = self.scorer.score([s for j in jobs for s in j.samples], [r for j in jobs for r in j.responses])
        except Exception as exn:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exn)
                return
            for job in jobs:
                self._score([job])
            return
        start = 0
        for job in jobs:
            job.future.set_result(scores[start : start + len(job.samples)])
            start += len(job.samples)


class _Handler(BaseHTTPRequestHandler):
    # set by make_server on a subclass
    batcher: Batcher
    max_body_bytes: int
    timeout: float  # seconds any one read or write of the connection may wait (StreamRequestHandler applies it)

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._reply(404, {"error": f"no such endpoint {self.path}; GET /health or POST /score"})
        scorer = self.batcher.scorer
        self._reply(200, {"status": "ok", "model": scorer.path, "modality": scorer.modality,
                          "max_body_bytes": self.max_body_bytes,
                          "max_response_chars": getattr(scorer, "max_response_chars", None)})

    def do_POST(self) -> None:
        if self.path != "/score":
            return self._reply(404, {"error": f"no such endpoint {self.path}; GET /health or POST /score"})
        body = self._body()
        if body is None:
            return
        try:
            payload = json.loads(body)
            samples = [decode_sample(s) for s in payload["samples"]]
            responses = payload["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise ValueError("responses must be a list of strings")
        except (ValueError, KeyError, TypeError, AttributeError, OSError, binascii.Error) as exn:
            return self._reply(400, {"error": f"bad request: {type(exn).__name__}: {exn}"})
        try:
            scores = self.batcher.submit(samples, responses).result()
        except ValueError as exn:  # a prompt the model cannot score (e.g. images for a text model)
            return self._reply(400, {"error": str(exn)})
        except Exception as exn:  # reported to the client, which retries
            log.exception("scoring failed")
            return self._reply(500, {"error": f"{type(exn).__name__}: {exn}"})
        self._reply(200, {"scores": scores})

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411, 400, 413 or 408 (the body is then left unread)."""
        lengths = set(self.headers.get_all("Content-Length") or [])
        if not lengths:
            return self._refuse(411, "a Content-Length header is required")
        value = lengths.pop().strip()
        if lengths or not value.isascii() or not value.isdigit():
            return self._refuse(400, f"bad Content-Length {self.headers.get_all('Content-Length')}")
        if len(value) > 18 or int(value) > self.max_body_bytes:
            return self._refuse(413, f"a body of {value} bytes is over this service's limit of "
                                     f"{self.max_body_bytes} bytes (--max-body-mb): send fewer pairs per request")
        try:
            body = self.rfile.read(int(value))
        except TimeoutError:
            return self._refuse(408, f"the body did not arrive: no data for {self.timeout} s")
        if len(body) < int(value):
            return self._refuse(400, f"the body ended after {len(body)} of its {value} bytes")
        return body

    def _refuse(self, code: int, error: str) -> None:
        self.close_connection = True  # what is left of the body is never parsed
        try:
            self._reply(code, {"error": error})
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self._drain(time.monotonic() + LINGER_S)
        except OSError:  # the client is gone
            pass

    def _drain(self, deadline: float) -> None:
        """Read and drop what the client still sends, until it stops or `deadline`: a socket closed with unread
        data resets the connection, and the client could lose the answer before reading it."""
        while (left := deadline - time.monotonic()) > 0:
            self.connection.settimeout(left)
            if not self.connection.recv(65536):
                return

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class RewardServer(ThreadingHTTPServer):
    """The HTTP server: a thread per connection reads and decodes requests; `batcher` scores them."""

    daemon_threads = True

    def __init__(self, address, handler, batcher: Batcher):
        self.batcher = batcher
        super().__init__(address, handler)

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


def make_server(scorer, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = MAX_BODY_BYTES,
                socket_timeout: float = SOCKET_TIMEOUT_S, max_batch: int = MAX_BATCH_PAIRS) -> RewardServer:
    """A threading HTTP server answering /health and /score with `scorer` (call serve_forever on it, and
    server_close when done). Bodies over `max_body_bytes` are refused (413); a connection that sends or reads
    nothing for `socket_timeout` seconds is dropped; up to `max_batch` waiting pairs are scored together."""
    batcher = Batcher(scorer, max_batch)
    handler = type("RewardHandler", (_Handler,), {"batcher": batcher, "max_body_bytes": max_body_bytes,
                                                  "timeout": socket_timeout})
    return RewardServer((host, port), handler, batcher)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="reward model directory (a stage=rm or rm_text hf/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    parser.add_argument("--dtype", default="float32", help="weights' dtype: bfloat16 halves a 7B model's memory")
    parser.add_argument("--max-response-chars", type=int, default=MAX_RESPONSE_CHARS,
                        help="a longer response is scored by its last this many characters (clients cut it too)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20,
                        help="largest request body, in MiB (413 above it; clients split their pairs to fit)")
    parser.add_argument("--socket-timeout", type=float, default=SOCKET_TIMEOUT_S,
                        help="seconds a connection may stay silent before it is dropped")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH_PAIRS,
                        help="pairs scored in one round, from all the requests waiting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scorer = RewardModelScorer(args.model, device=args.device, batch_size=args.batch_size, dtype=args.dtype,
                               max_response_chars=args.max_response_chars)
    server = make_server(scorer, args.host, args.port, max_body_bytes=int(args.max_body_mb * 2**20),
                         socket_timeout=args.socket_timeout, max_batch=args.max_batch)
    host, port = server.server_address[:2]
    print(f"[mimovl] reward service for {args.model} ({scorer.modality}) on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
