"""The reward service's client and wire format: HTTPRewardScorer scores like an in-process reward model.

    scorer = HTTPRewardScorer("http://127.0.0.1:8000")     # the same `score` as model.reward.RewardModelScorer
    scorer.health(timeout=5)                                # the service's limits, which `score` then keeps to
    scorer.score(samples, responses)                        # retries, then raises RewardServiceError

The service itself is `python -m mimovl.serve --model DIR` (mimovl.serve documents the endpoints and limits).
On the wire a sample is a schema prompt with each image a base64 PNG string and each video {"frames": [base64
PNG], "timestamps": [...], "fps": ...} (`encode_sample` / `decode_sample`). A response is cut to its last
`max_response_chars` characters before sending, as the service would cut it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request

from PIL import Image

from mimovl.data.shards import encode_image
from mimovl.rewards.parse import response_tail

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20  # a request body; larger ones get 413 (the client splits its pairs to fit)


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

    After `health()`, `score` keeps to the service's limits: responses cut to their last `max_response_chars`
    characters (as the service would), and the pairs sent in as many requests as keep each body within
    `max_body_bytes`.
    """

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5):
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        self.limits: dict = {}  # max_body_bytes and max_response_chars, as the service's /health last said

    def health(self, timeout: float | None = None) -> dict:
        """The service's /health answer (one attempt, within `timeout` seconds, default self.timeout), whose
        limits `score` then keeps to; RewardServiceError when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout or self.timeout) as reply:
                info = json.loads(reply.read())
        except (OSError, ValueError) as exn:
            raise RewardServiceError(f"reward service at {self.url} is not answering /health: {exn}. "
                                     f"{_START_HINT}") from exn
        if not isinstance(info, dict) or info.get("status") != "ok":
            raise RewardServiceError(f"{self.url}/health answered {info!r:.200}, not a reward service's status")
        self.limits = {k: info[k] for k in ("max_body_bytes", "max_response_chars") if info.get(k) is not None}
        return info

    def score(self, samples: list[dict], responses: list[str]) -> list[float]:
        """sigmoid(reward) in [0, 1] per (sample, response), from the service. Never a default score: raises
        RewardServiceError when the service stays unreachable or rejects the request."""
        if len(samples) != len(responses):  # the service would refuse it; say so before encoding images
            raise RewardServiceError(f"{len(samples)} samples but {len(responses)} responses")
        cap = self.limits.get("max_response_chars")
        encoded = [(json.dumps(encode_sample(s)), json.dumps(response_tail(r, cap)))
                   for s, r in zip(samples, responses)]
        scores: list[float] = []
        for chunk in self._chunks(encoded):
            body = '{"samples": [' + ", ".join(s for s, _ in chunk) + '], "responses": [' + ", ".join(
                r for _, r in chunk) + "]}"
            scores += self._post(body.encode("ascii"), len(chunk))  # json.dumps writes ASCII
        return scores

    def _chunks(self, encoded: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """The pairs in order, in runs whose request body stays within the service's max_body_bytes."""
        limit = self.limits.get("max_body_bytes")
        if limit is None:
            return [encoded] if encoded else []
        chunks, size = [[]], _BODY_OVERHEAD
        for index, (sample, response) in enumerate(encoded):
            n = len(sample) + len(response) + 4  # the two ", " separators
            if n + _BODY_OVERHEAD > limit:
                raise RewardServiceError(
                    f"pair {index} is {n} bytes on the wire, over the limit of {limit} bytes of the reward service "
                    f"at {self.url}: start it with a larger --max-body-mb"
                )
            if chunks[-1] and size + n > limit:
                chunks.append([])
                size = _BODY_OVERHEAD
            chunks[-1].append((sample, response))
            size += n
        return [c for c in chunks if c]

    def _post(self, body: bytes, expected: int) -> list[float]:
        request = urllib.request.Request(
            f"{self.url}/score", data=body, headers={"Content-Type": "application/json"}
        )
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return self._scores(json.loads(reply.read()), expected)
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


_BODY_OVERHEAD = len('{"samples": [], "responses": []}')


_START_HINT = ("Is it running, at that address? Start it with `python -m mimovl.serve --model DIR "
               "--host HOST --port PORT` (DIR: a stage=rm or stage=rm_text hf/ export), or fix the URL.")


def _error_detail(exn: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exn.read()).get("error", exn.reason)
    except (OSError, ValueError, AttributeError):
        return str(exn.reason)
