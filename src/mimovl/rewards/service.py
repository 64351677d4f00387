"""Reward-as-a-Service: one reward model served over HTTP to any number of RL workers, and its client.

    python -m mimovl.rewards.service --model outputs/mimovl/rm/hf [--host 127.0.0.1] [--port 8000] [--device cpu]

    GET  /health -> {"status": "ok", "model": DIR, "modality": "vision" | "text"}
    POST /score  {"samples": [...], "responses": [...]} -> {"scores": [float in [0, 1], ...]}

On the wire a sample is a schema prompt (`mimovl.rewards.models`) with each image a base64 PNG string and
each video {"frames": [base64 PNG], "timestamps": [...], "fps": ...} (`encode_sample` / `decode_sample`).
A bad request gets 400 {"error": ...}; a failure while scoring 500 {"error": ...}. `--port 0` picks a free
port; the service prints its URL once it accepts requests.

    scorer = HTTPRewardScorer("http://127.0.0.1:8000")     # the same `score` as RewardModelScorer
    scorer.score(samples, responses)                        # retries, then raises RewardServiceError
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from mimovl.data.shards import encode_image

log = logging.getLogger(__name__)


class RewardServiceError(RuntimeError):
    """The reward service could not be reached or refused the request; the message names the URL."""


def _png64(img: Image.Image) -> str:
    return base64.b64encode(encode_image(img, "png")).decode("ascii")


def _image(data: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    img.load()
    return img.convert("RGB")


def encode_sample(sample: dict) -> dict:
    """A JSON-able copy of a prompt sample: messages, images and videos as base64 PNG (lossless)."""
    return {
        "messages": sample["messages"],
        "images": [_png64(img) for img in sample.get("images") or []],
        "videos": [
            {"frames": [_png64(f) for f in v["frames"]], "timestamps": list(v["timestamps"]), "fps": v["fps"]}
            for v in sample.get("videos") or []
        ],
    }


def decode_sample(data: dict) -> dict:
    """The prompt sample `encode_sample` encoded, with PIL images again."""
    return {
        "messages": data["messages"],
        "images": [_image(img) for img in data.get("images") or []],
        "videos": [
            {"frames": [_image(f) for f in v["frames"]], "timestamps": [float(t) for t in v["timestamps"]],
             "fps": float(v["fps"])}
            for v in data.get("videos") or []
        ],
    }


class HTTPRewardScorer:
    """A client of the reward service with RewardModelScorer's `score`.

    Args:
        url: the service's base URL, e.g. "http://127.0.0.1:8000".
        timeout: seconds to wait for one answer.
        retries: further attempts after a failed one (connection refused or reset, timeout, HTTP 5xx); a 4xx
            answer is not retried. Attempt k waits backoff * 2**(k-1) seconds first.
    """

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5):
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff

    def health(self) -> dict:
        """The service's /health answer (one attempt); RewardServiceError when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError) as exn:
            raise RewardServiceError(f"reward service at {self.url} is not answering /health: {exn}. "
                                     f"{_START_HINT}") from exn

    def score(self, samples: list[dict], responses: list[str]) -> list[float]:
        """sigmoid(reward) in [0, 1] per (sample, response), from the service. Never a default score: raises
        RewardServiceError when the service stays unreachable or rejects the request."""
        body = json.dumps({"samples": [encode_sample(s) for s in samples], "responses": list(responses)})
        request = urllib.request.Request(
            f"{self.url}/score", data=body.encode("utf-8"), headers={"Content-Type": "application/json"}
        )
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return self._scores(json.loads(reply.read()), len(samples))
            except urllib.error.HTTPError as exn:
                detail = _error_detail(exn)
                if exn.code < 500:
                    raise RewardServiceError(
                        f"reward service at {self.url} rejected the request (HTTP {exn.code}): {detail}"
                    ) from exn
                last = f"HTTP {exn.code}: {detail}"
            except (OSError, ValueError) as exn:  # refused, reset, timed out, or a reply cut short
                last = f"{type(exn).__name__}: {exn}"
            log.warning("reward service at %s, attempt %d of %d failed: %s", self.url, attempt + 1,
                        self.retries + 1, last)
        raise RewardServiceError(
            f"reward service at {self.url} failed {self.retries + 1} attempts (last: {last}). {_START_HINT}"
        )

    def _scores(self, reply: dict, expected: int) -> list[float]:
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list) or len(scores) != expected:
            raise RewardServiceError(f"reward service at {self.url} sent {reply!r:.200}, not {expected} scores")
        return [float(s) for s in scores]


_START_HINT = ("Is it running, at that address? Start it with `python -m mimovl.rewards.service --model DIR "
               "--host HOST --port PORT` (DIR: a stage=rm or stage=rm_text hf/ export), or fix the URL.")


def _error_detail(exn: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exn.read()).get("error", exn.reason)
    except (OSError, ValueError, AttributeError):
        return str(exn.reason)


class _Handler(BaseHTTPRequestHandler):
    scorer = None  # the RewardModelScorer, set by make_server on a subclass

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._reply(404, {"error": f"no such endpoint {self.path}; GET /health or POST /score"})
        self._reply(200, {"status": "ok", "model": self.scorer.path, "modality": self.scorer.modality})

    def do_POST(self) -> None:
        if self.path != "/score":
            return self._reply(404, {"error": f"no such endpoint {self.path}; GET /health or POST /score"})
        try:
            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            samples = [decode_sample(s) for s in payload["samples"]]
            responses = payload["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise ValueError("responses must be a list of strings")
        except (ValueError, KeyError, TypeError, AttributeError, OSError, binascii.Error) as exn:
            return self._reply(400, {"error": f"bad request: {type(exn).__name__}: {exn}"})
        try:
            scores = self.scorer.score(samples, responses)
        except ValueError as exn:  # a prompt the model cannot score (e.g. images for a text model)
            return self._reply(400, {"error": str(exn)})
        except Exception as exn:  # reported to the client, which retries
            log.exception("scoring failed")
            return self._reply(500, {"error": f"{type(exn).__name__}: {exn}"})
        self._reply(200, {"scores": scores})

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(scorer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threading HTTP server answering /health and /score with `scorer` (call serve_forever on it)."""
    handler = type("RewardHandler", (_Handler,), {"scorer": scorer})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="reward model directory (a stage=rm or rm_text hf/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    parser.add_argument("--dtype", default="float32", help="weights' dtype: bfloat16 halves a 7B model's memory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mimovl.rewards.models import RewardModelScorer  # here: clients of this module never load torch models

    scorer = RewardModelScorer(args.model, device=args.device, batch_size=args.batch_size, dtype=args.dtype)
    server = make_server(scorer, args.host, args.port)
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
