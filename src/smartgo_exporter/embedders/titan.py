"""Amazon Titan Multimodal Embeddings G1 on Amazon Bedrock, through InvokeModel (boto3).

Titan takes a photo of at most 2048x2048 pixels, base64 in a JSON body, so each photo is decoded
and re-encoded first (`encode_for_titan`): upright by its EXIF orientation, transparency laid on
white (a product page's background), the first frame of an animation, shrunk to fit 2048 px and
sent as a JPEG under 5 MB, well below Titan's 25 MB, because every byte is upload time. The same
photo therefore always sends the same bytes and gets the same vector.

Failures are split by whether another image could fare better:
- one image's: Bedrock refused it (ValidationException), it stayed throttled past its retry
  budget, the model or service failed or timed out on it. That slot gets an EmbeddingError and
  the batch goes on; a later run fills the embedding in.
- the run's: credentials refused or missing, no access to the model, a model id Bedrock does
  not know (in this region), or an answer that is not a vector of the configured length (the
  model id does not name the deployment the configuration believes in). These raise
  ModelUnavailable: every following image would fail the same way, and a table of silently
  failed rows is worse than a stopped run.

Throttling gets two layers. botocore's standard retries (`max_attempts`) absorb short bursts,
but they stop early once the client's shared retry quota is spent, which is exactly what a long
burst does; so a call still throttled after them waits and tries again (`ThrottleBackoff`) until
its image's time budget is spent.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from PIL import ExifTags, Image, ImageOps

from smartgo_exporter.embedders import Vector
from smartgo_exporter.embedders.rgb import to_rgb
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable

INSTALL_HINT = "pip install 'smartgo-exporter[aws]'"

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        HTTPClientError,
        NoRegionError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
except ImportError:  # the `aws` extra; load_embedder imports this module only when it is chosen
    raise ModelUnavailable(
        f"the Titan embedder needs boto3; install it with: {INSTALL_HINT}"
    ) from None

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

    from smartgo_exporter.config import TitanEmbedderConfig

log = structlog.get_logger(__name__)

MAX_SIDE = 2048
"""Titan's largest accepted resolution, on either side."""
MAX_IMAGE_BYTES = 5_000_000
"""Our own limit on the JPEG sent (Titan accepts 25 MB): smaller requests, faster calls."""
JPEG_QUALITIES = (90, 80, 70, 60, 50)
"""Tried in turn until the JPEG fits MAX_IMAGE_BYTES; 90 suffices for any real product photo."""
MAX_TITLE_CHARS = 500
"""Titan refuses text over 256 tokens, image and all; 500 characters of a Latin-script title
stay within that."""

RETRIED_CODES = frozenset(
    {"ThrottlingException", "ModelNotReadyException", "ServiceQuotaExceededException"}
)
"""Codes that mean "not now" rather than "not this image": retried with ThrottleBackoff."""
RUN_WIDE_CODES = frozenset(
    {
        "AccessDeniedException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ResourceNotFoundException",
        "UnrecognizedClientException",
    }
)
"""Codes about the credentials or the model, never about one image: they raise ModelUnavailable."""
UNKNOWN_MODEL_MESSAGE = "model identifier is invalid"
"""Bedrock's ValidationException for a model id it does not know (or not in this region)."""
IMAGE_CODES = {
    "ValidationException": "validation",
    "ModelTimeoutException": "timeout",
    "ModelErrorException": "model_error",
}
"""Per-image codes and their reason slugs; any other code is `service_error`."""


@dataclasses.dataclass(frozen=True)
class ThrottleBackoff:
    """How long a throttled image keeps trying once botocore's own retries have given up.

    The n-th wait is `first_seconds` doubled n-1 times, capped at `max_seconds`, of which a
    random half is taken off, so that workers throttled together do not come back together. No
    call starts later than `budget_seconds` after the image's first one: the image is then
    `throttled` (and, for the rest of its batch, so is every image throttled again), so a run
    under a quota far too small still ends.
    """

    first_seconds: float = 1.0
    max_seconds: float = 15.0
    budget_seconds: float = 45.0

    def delay(self, throttled_calls: int) -> float:
        ceiling = min(self.max_seconds, self.first_seconds * 2.0 ** (throttled_calls - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class TitanEmbedder:
    """An Embedder (see `smartgo_exporter.embedders`) backed by Bedrock's Titan Multimodal model.

    Construction builds the boto3 client (so a missing region or a bad endpoint fails before any
    sale is read) but calls nothing: credentials and model access are proven by the first call.
    `max_image_bytes` and `backoff` exist for tests and tuning; the defaults suit Bedrock.

        embedder = TitanEmbedder(TitanEmbedderConfig(dimension=384, region="eu-central-1"))
        [vector] = embedder.embed([Path("bag.jpg").read_bytes()])  # float32, (384,), norm 1
    """

    def __init__(
        self,
        config: TitanEmbedderConfig,
        *,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        backoff: ThrottleBackoff | None = None,
    ) -> None:
        self._bedrock_model = config.model_id
        self._dimension = config.dimension
        self._include_title = config.include_title
        self._concurrency = config.concurrency
        self._max_image_bytes = max_image_bytes
        self._backoff = backoff or ThrottleBackoff()
        self._client = _bedrock_client(config)
        self._model_id = f"{config.model_id}:{config.dimension}" + (
            "+title" if config.include_title else ""
        )

    @property
    def model_id(self) -> str:
        """The Bedrock model, the output length and `+title` when titles are embedded too.

        Vectors of different lengths, or with and without text averaged in, are not comparable.
        """
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dimension

    @property
    def include_title(self) -> bool:
        return self._include_title

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]:
        """Position for position, a unit-norm float32 vector or why that image was refused.

        Up to `concurrency` calls run at once. With `include_title`, a caption is sent as
        `inputText` (whitespace collapsed, cut at MAX_TITLE_CHARS); an image without one is
        embedded from its pixels alone. Reasons: `decode_failed`, `too_many_pixels` and
        `too_large` (the photo, before any call), `validation` (Bedrock refused the request),
        `throttled` (still throttled when its budget ran out), `timeout`, `model_error`,
        `service_error`, `unreachable` (no connection to the endpoint) and
        `degenerate_embedding`. Raises ModelUnavailable for failures of the whole run (see the
        module docstring), after letting calls already in flight finish; ValueError when
        `captions` and `images` differ in length.
        """
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        if not images:
            return []
        titles = captions if captions is not None else [None] * len(images)
        batch = _Batch()
        workers = min(self._concurrency, len(images))
        with ThreadPoolExecutor(workers, thread_name_prefix="titan") as pool:
            futures = [
                pool.submit(self._embed_one, image, title, batch)
                for image, title in zip(images, titles, strict=True)
            ]
            try:
                return [future.result() for future in futures]
            finally:
                # After a run-wide failure, or an interrupt, nothing still queued is worth a call.
                batch.stopped.set()
                for future in futures:
                    future.cancel()

    def _embed_one(
        self, image: bytes, caption: str | None, batch: _Batch
    ) -> Vector | EmbeddingError:
        """`_embed_image`, unless another image has already failed the whole run."""
        if batch.stopped.is_set():
            return EmbeddingError("cancelled")  # never returned: embed() raises that failure
        try:
            return self._embed_image(image, caption, batch)
        except BaseException:
            batch.stopped.set()
            raise

    def _embed_image(
        self, image: bytes, caption: str | None, batch: _Batch
    ) -> Vector | EmbeddingError:
        request = titan_request(
            image,
            caption if self._include_title else None,
            self._dimension,
            self._max_image_bytes,
        )
        if isinstance(request, EmbeddingError):
            return request
        body = json.dumps(request)
        started = time.monotonic()
        throttled_calls = 0
        while True:
            outcome = self._invoke(body)
            if not isinstance(outcome, _Throttled):
                return outcome
            throttled_calls += 1
            delay = self._backoff.delay(throttled_calls)
            elapsed = time.monotonic() - started
            if batch.throttled_out.is_set() or elapsed + delay > self._backoff.budget_seconds:
                batch.throttled_out.set()
                return EmbeddingError(
                    "throttled",
                    f"{outcome.code} on {throttled_calls} calls over {elapsed:.1f}s",
                )
            log.debug("bedrock_throttled", code=outcome.code, calls=throttled_calls, wait=delay)
            if batch.stopped.wait(delay):
                return EmbeddingError("cancelled")

    def _invoke(self, body: str) -> Vector | EmbeddingError | _Throttled:
        """One InvokeModel call (botocore's retries included), judged by the rules above."""
        try:
            response = self._client.invoke_model(
                modelId=self._bedrock_model,
                body=body,
                contentType="application/json",
                accept="application/json",
            )
            payload = response["body"].read()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            message = _clip(str(error.response.get("Error", {}).get("Message", "")))
            if code in RETRIED_CODES:
                return _Throttled(code)
            if code in RUN_WIDE_CODES or UNKNOWN_MODEL_MESSAGE in message:
                raise ModelUnavailable(
                    f"Bedrock refused {self._bedrock_model!r} ({code}): {message}"
                ) from None
            return EmbeddingError(IMAGE_CODES.get(code, "service_error"), f"{code}: {message}")
        except (ReadTimeoutError, ConnectTimeoutError) as error:
            return EmbeddingError("timeout", type(error).__name__)
        except (BotoConnectionError, ConnectionClosedError) as error:
            return EmbeddingError("unreachable", type(error).__name__)
        except HTTPClientError as error:
            return EmbeddingError("service_error", type(error).__name__)
        except BotoCoreError as error:
            # Failures before the request left: credentials, signing, endpoint resolution.
            raise ModelUnavailable(
                f"cannot call Bedrock {self._bedrock_model!r}: {type(error).__name__}: {error}"
            ) from None
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        return titan_vector(answer, self._bedrock_model, self._dimension)


@dataclasses.dataclass(frozen=True)
class _Throttled:
    code: str


@dataclasses.dataclass(frozen=True)
class _Batch:
    """What the workers of one `embed` call share.

    `stopped`: an image failed the whole run, so no further call is worth making.
    `throttled_out`: an image spent its whole throttling budget, so the quota is not coming
    back soon; the others give up at their next throttle instead of each waiting out a budget
    of their own, which would hold a batch of 500 photos for over an hour.
    """

    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)
    throttled_out: threading.Event = dataclasses.field(default_factory=threading.Event)


def titan_request(
    image: bytes, caption: str | None, dimension: int, max_image_bytes: int = MAX_IMAGE_BYTES
) -> dict[str, Any] | EmbeddingError:
    """The InvokeModel body for a photo (and its caption, unless None): also a batch record's
    `modelInput`, so both ways send Titan the same request for the same photo."""
    prepared = encode_for_titan(image, max_image_bytes)
    if isinstance(prepared, EmbeddingError):
        return prepared
    request: dict[str, Any] = {
        "inputImage": base64.b64encode(prepared).decode("ascii"),
        "embeddingConfig": {"outputEmbeddingLength": dimension},
    }
    text = titan_caption(caption)
    if text is not None:
        request["inputText"] = text
    return request


def titan_caption(caption: str | None) -> str | None:
    """The `inputText` sent for a caption: whitespace collapsed, cut at MAX_TITLE_CHARS; None
    for none or a blank one, whose photo is embedded from its pixels alone."""
    if not caption or not caption.strip():
        return None
    return " ".join(caption.split())[:MAX_TITLE_CHARS]


def titan_vector(answer: object, model: str, dimension: int) -> Vector | EmbeddingError:
    """The unit vector in Titan's answer (an InvokeModel body, or a batch record's
    `modelOutput`), judged as the module docstring says: no vector, or one of another length
    than `dimension`, raises ModelUnavailable naming `model`; a zero or infinite one is that
    image's `degenerate_embedding`."""
    try:
        values = np.asarray(answer["embedding"], dtype=np.float64)  # type: ignore[index]
    except (ValueError, KeyError, TypeError):
        values = None
    if values is None or values.ndim != 1:
        raise ModelUnavailable(
            f"Bedrock {model!r} did not answer with an embedding; is it a "
            f"Titan Multimodal Embeddings model?"
        )
    if len(values) != dimension:
        raise ModelUnavailable(
            f"Bedrock {model!r} answered a vector of length {len(values)}, not "
            f"the configured {dimension}: the model id or embedder.dimension is wrong"
        )
    norm = float(np.linalg.norm(values))
    if not np.isfinite(norm) or norm == 0.0:
        return EmbeddingError("degenerate_embedding", f"vector norm is {norm}")
    return (values / norm).astype(np.float32)


def _bedrock_client(config: TitanEmbedderConfig) -> BedrockRuntimeClient:
    client: BedrockRuntimeClient = aws_client(config, "bedrock-runtime", config.endpoint_url)
    return client


def aws_client(config: TitanEmbedderConfig, service: str, endpoint_url: str | None) -> Any:
    """A boto3 client for `service` in the embedder's region, with its retries and timeouts;
    ModelUnavailable when there is no region or the endpoint is unusable."""
    settings = Config(
        retries={"mode": "standard", "total_max_attempts": config.max_attempts},
        connect_timeout=config.timeout_seconds,
        read_timeout=config.timeout_seconds,
        max_pool_connections=config.concurrency,
        user_agent_extra="smartgo-exporter",
    )
    try:
        session = boto3.session.Session(region_name=config.region)
        return session.client(service, endpoint_url=endpoint_url, config=settings)  # type: ignore[call-overload]
    except NoRegionError:
        raise ModelUnavailable(
            "no AWS region for Bedrock: set embedder.region (SGX_EMBEDDER__REGION) or AWS_REGION"
        ) from None
    except (BotoCoreError, ValueError) as error:
        raise ModelUnavailable(f"cannot create the {service} client: {error}") from None


def _clip(message: str, limit: int = 300) -> str:
    """A service message short enough for a log line or the table's error detail."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def encode_for_titan(data: bytes, max_bytes: int = MAX_IMAGE_BYTES) -> bytes | EmbeddingError:
    """The photo as Titan should receive it, a JPEG within MAX_SIDE and `max_bytes`, or why not.

    Never raises for bad input: one unreadable photo must cost one slot, not the batch.
    """
    if not data:
        return EmbeddingError("decode_failed", "empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if _sendable_as_is(image, len(data), max_bytes):
                # Most product photos: decoding and re-encoding them would change nothing
                # Titan sees, and would cost more CPU than the rest of the call.
                return data
            image.draft("RGB", _fitted(image.size))
            upright = ImageOps.exif_transpose(image)
            flat = to_rgb(upright)
            if max(flat.size) > MAX_SIDE:
                flat = flat.resize(_fitted(flat.size), Image.Resampling.LANCZOS)
    except Image.DecompressionBombError as error:
        return EmbeddingError("too_many_pixels", str(error))
    except Exception as error:  # Pillow's many decoders fail in many ways; one photo, one slot
        return EmbeddingError("decode_failed", f"{type(error).__name__}: {error}")
    for quality in JPEG_QUALITIES:
        buffer = io.BytesIO()
        flat.save(buffer, "JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
    return EmbeddingError(
        "too_large",
        f"{flat.width}x{flat.height} is {buffer.tell()} bytes as JPEG at quality "
        f"{JPEG_QUALITIES[-1]}, over {max_bytes}",
    )


def _sendable_as_is(image: Image.Image, size: int, max_bytes: int) -> bool:
    """A plain JPEG within Titan's limits, the right way up: what re-encoding would produce."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1) if "exif" in image.info else 1
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and max(image.size) <= MAX_SIDE
        and size <= max_bytes
        and orientation == 1
    )


def _fitted(size: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled down, keeping its aspect, until neither side exceeds MAX_SIDE."""
    width, height = size
    scale = min(1.0, MAX_SIDE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))
