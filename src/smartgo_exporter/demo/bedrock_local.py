"""A local server speaking Bedrock runtime's InvokeModel wire format, for Titan without AWS.

`smartgo-exporter demo --aws-local` starts it so that the Titan embedder runs its production code
(boto3, SigV4, botocore's retries and error parsing) with only `endpoint_url` changed; the tests
use it to prove that embedder against every answer Bedrock can give.

    with serve_bedrock(access_key="AKIA...", secret_key="...") as bedrock:
        config = TitanEmbedderConfig(endpoint_url=bedrock.endpoint_url, region="us-east-1")
        ...  # with the same key and secret in boto3's default chain (AWS_ACCESS_KEY_ID, ...)
        assert bedrock.requests > 0

It checks what Bedrock checks before a model runs, so a client that passes here is right about
more than the happy path:
- a SigV4 `Authorization` header, recomputed with botocore's own `SigV4Auth` from the server's
  secret over the headers the client says it signed (403 InvalidSignatureException when it
  differs, UnrecognizedClientException for an unknown access key);
- the model id (ValidationException "The provided model identifier is invalid.", as Bedrock
  answers an id it does not know) and the body: JSON with `inputImage` and/or `inputText`,
  `embeddingConfig.outputEmbeddingLength` of 256, 384 or 1024, no other keys;
- the image: base64 of a picture Pillow can open, at most 2048x2048 and `max_image_bytes`.

Errors come back as Bedrock sends them, a status, an `x-amzn-ErrorType` header (with Coral's
`:http://internal.amazon.com/...` suffix, which botocore's rest-json parser strips) and a JSON
`message`, so `ClientError.response["Error"]["Code"]` is what it would be against AWS.

An embedding is deterministic but means nothing: a pseudo-random vector seeded from the sha256
of the decoded image bytes (and of the text, averaged in as Titan does), near unit length as
Titan's are. Identical photos get identical vectors; any changed byte gives an unrelated one,
so similar-looking photos are NOT near each other. The server proves the wiring, not a model.

Knobs (`reset()` restores them): `dimension_override` (answer vectors of this length whatever
was asked), `throttle_next` (answer that many upcoming requests 429 ThrottlingException),
`throttle_seconds` (answer every request 429 ThrottlingException for that many seconds of wall
time, counted from the first request that arrives once it is set: a quota exhausted for a
while, however many calls the client makes meanwhile), `max_image_bytes`, `delay_seconds` (hold
every request that long), `denied_models` (403 AccessDeniedException). Records: `requests`,
`throttled`, `throttled_since` (the `time.monotonic()` of the first request `throttle_seconds`
throttled), `per_model`, `in_flight`, `max_in_flight`, `bodies` (the parsed JSON of every
signed, unthrottled request for a model it serves) and `last_body`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from PIL import Image

from smartgo_exporter.demo.server import ServerThread

MODELS = frozenset({"amazon.titan-embed-image-v1"})
DIMENSIONS = frozenset({256, 384, 1024})
MAX_SIDE = 2048
MAX_TEXT_TOKENS = 256
DEFAULT_MAX_IMAGE_BYTES = 25_000_000
"""Titan's documented limit on the input image."""
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_REQUEST_BYTES = 64 * 1024 * 1024

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_KEPT_BY_RESET = frozenset({"endpoint_url", "access_key", "secret_key"})


class _Refusal(Exception):
    """An error answer, raised from deep in a check and turned into a response once."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(
            {"message": self.message},
            status=self.status,
            headers={
                "x-amzn-ErrorType": self.code + _ERROR_TYPE_SUFFIX,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )


def _validation(message: str) -> _Refusal:
    return _Refusal(400, "ValidationException", message)


@dataclasses.dataclass
class LocalBedrock:
    """The server's credentials, address, knobs and records; see the module docstring.

    Only a request signed with `access_key` and `secret_key` gets an embedding. `endpoint_url`
    is set once `serve_bedrock` listens.
    """

    access_key: str
    secret_key: str
    endpoint_url: str = ""
    dimension_override: int | None = None
    throttle_next: int = 0
    throttle_seconds: float = 0.0
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    delay_seconds: float = 0.0
    denied_models: set[str] = dataclasses.field(default_factory=set)
    requests: int = 0
    throttled: int = 0
    throttled_since: float | None = None
    per_model: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def last_body(self) -> dict[str, Any]:
        assert self.bodies, "the server has received no valid request"
        return self.bodies[-1]

    def reset(self) -> None:
        """Knobs back to their defaults and records emptied; credentials and address kept."""
        fresh = LocalBedrock(self.access_key, self.secret_key)
        for field in dataclasses.fields(self):
            if field.name not in _KEPT_BY_RESET:
                setattr(self, field.name, getattr(fresh, field.name))

    async def invoke(self, request: web.Request) -> web.Response:
        """POST /model/{model_id}/invoke, as Bedrock runtime's InvokeModel answers it."""
        payload = await request.read()
        model = request.match_info["model_id"]
        self.requests += 1
        self.per_model[model] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            return web.json_response(
                self._answer(request, model, payload),
                headers={"x-amzn-RequestId": str(uuid.uuid4())},
            )
        except _Refusal as refusal:
            return refusal.response()
        finally:
            self.in_flight -= 1

    def _answer(self, request: web.Request, model: str, payload: bytes) -> dict[str, Any]:
        _check_signature(request, payload, Credentials(self.access_key, self.secret_key))
        if self.throttle_next > 0:
            self.throttle_next -= 1
            raise self._throttled()
        if self.throttle_seconds > 0:
            now = time.monotonic()
            if self.throttled_since is None:
                self.throttled_since = now
            if now - self.throttled_since < self.throttle_seconds:
                raise self._throttled()
        if model not in MODELS:
            raise _validation("The provided model identifier is invalid.")
        if model in self.denied_models:
            raise _Refusal(
                403,
                "AccessDeniedException",
                "You don't have access to the model with the specified model ID.",
            )
        if request.content_type != "application/json":
            raise _validation(f"unsupported content type {request.content_type!r}")
        try:
            body = json.loads(payload)
        except ValueError:
            raise _validation("Malformed input request: not valid JSON") from None
        if not isinstance(body, dict):
            raise _validation("Malformed input request: expected type: JSONObject")
        self.bodies.append(body)
        length, image, text = self._parse(body)
        tokens = len(text.split())
        vector = _embedding(image, text, self.dimension_override or length)
        return {"embedding": vector, "inputTextTokenCount": tokens}

    def _throttled(self) -> _Refusal:
        self.throttled += 1
        return _Refusal(429, "ThrottlingException", "Too many requests, please wait.")

    def _parse(self, body: dict[str, Any]) -> tuple[int, bytes, str]:
        """(output length, image bytes, text) of a valid request; ValidationException if not."""
        extraneous = sorted(set(body) - {"inputImage", "inputText", "embeddingConfig"})
        if extraneous:
            raise _validation(
                f"Malformed input request: extraneous key {extraneous} is not permitted"
            )
        if "inputImage" not in body and "inputText" not in body:
            raise _validation("Malformed input request: inputImage or inputText is required")
        config = body.get("embeddingConfig", {})
        length = config.get("outputEmbeddingLength", 1024) if isinstance(config, dict) else None
        if length not in DIMENSIONS:
            raise _validation(
                f"Malformed input request: #/embeddingConfig/outputEmbeddingLength: {length} is "
                f"not a valid enum value, please reformat your input and try again."
            )
        text = body.get("inputText", "")
        if not isinstance(text, str) or len(text.split()) > MAX_TEXT_TOKENS:
            raise _validation(f"inputText must be a string of at most {MAX_TEXT_TOKENS} tokens")
        image = self._image(body["inputImage"]) if "inputImage" in body else b""
        return int(length), image, text

    def _image(self, encoded: object) -> bytes:
        if not isinstance(encoded, str):
            raise _validation("Malformed input request: #/inputImage: expected type: String")
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise _validation("Invalid image: inputImage is not valid base64") from None
        if len(data) > self.max_image_bytes:
            raise _validation(f"Invalid image: over the limit of {self.max_image_bytes} bytes")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image.verify()
        except Exception:  # whatever Pillow cannot open, Titan cannot either
            raise _validation("Invalid image: the image could not be decoded") from None
        if width > MAX_SIDE or height > MAX_SIDE:
            raise _validation(
                f"Invalid image: {width}x{height} exceeds the maximum of {MAX_SIDE}x{MAX_SIDE}"
            )
        return data


def _check_signature(request: web.Request, payload: bytes, credentials: Credentials) -> None:
    """Recompute the client's SigV4 signature over what it says it signed; refuse if it differs."""
    header = request.headers.get("Authorization")
    if header is None:
        raise _Refusal(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTHORIZATION.fullmatch(header)
    if match is None:
        raise _Refusal(403, "IncompleteSignatureException", "Malformed Authorization header")
    if match["key"] != credentials.access_key:
        raise _Refusal(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    if match["service"] != "bedrock":
        raise _Refusal(
            403,
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        )
    signed = match["signed"].split(";")
    amz_date = request.headers.get("X-Amz-Date", "")
    missing = [name for name in signed if name not in request.headers]
    if missing or "host" not in signed or "x-amz-date" not in signed:
        raise _Refusal(
            403, "IncompleteSignatureException", f"Unsigned or missing headers: {missing}"
        )
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _Refusal(403, "IncompleteSignatureException", "Malformed X-Amz-Date") from None
    skew = abs(datetime.now(UTC) - signed_at)
    if not amz_date.startswith(match["date"]) or skew > MAX_CLOCK_SKEW:
        raise _Refusal(403, "InvalidSignatureException", f"Signature expired: {amz_date}")
    declared = request.headers.get("X-Amz-Content-SHA256")
    if declared is not None and declared != hashlib.sha256(payload).hexdigest():
        raise _Refusal(
            400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' does not match"
        )
    headers = {name: ",".join(request.headers.getall(name)) for name in signed}
    rebuilt = AWSRequest(
        method=request.method,
        url=f"http://{request.host}{request.raw_path}",
        headers=headers,
        data=payload,
    )
    rebuilt.context["timestamp"] = amz_date
    signer = SigV4Auth(credentials, match["service"], match["region"])
    canonical = signer.canonical_request(rebuilt)
    expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    same_headers = signer.signed_headers(signer.headers_to_sign(rebuilt)) == match["signed"]
    if not same_headers or not hmac.compare_digest(expected, match["signature"]):
        raise _Refusal(403, "InvalidSignatureException", _SIGNATURE_MISMATCH)


def _embedding(image: bytes, text: str, length: int) -> list[float]:
    """Titan-like: the average of an image and a text vector, each seeded by its input."""
    parts = [_seeded_unit(b"image\0" + image, length)] if image else []
    if text:
        parts.append(_seeded_unit(b"text\0" + text.encode(), length))
    vector = np.mean(parts, axis=0)
    # Titan's vectors are close to, not exactly, unit length; so are these.
    scale = 0.98 + 0.04 * hashlib.sha256(image + text.encode()).digest()[0] / 255
    return [float(x) for x in vector / np.linalg.norm(vector) * scale]


def _seeded_unit(data: bytes, length: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8])
    vector = np.random.default_rng(seed).standard_normal(length)
    unit: np.ndarray[Any, np.dtype[np.float64]] = vector / np.linalg.norm(vector)
    return unit


@contextlib.contextmanager
def serve_bedrock(
    *, access_key: str, secret_key: str, host: str = "127.0.0.1", port: int = 0
) -> Iterator[LocalBedrock]:
    """Serve InvokeModel on `host`:`port` (0: a free port) while the block runs.

    Yields the server, its `endpoint_url` set; it is stopped, and the port closed, on the way out.
    """
    server = LocalBedrock(access_key, secret_key)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/model/{model_id:.+}/invoke", server.invoke)
    thread = ServerThread(app, host, port, name="local-bedrock")
    bound = thread.start()
    server.endpoint_url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    try:
        yield server
    finally:
        thread.stop()
