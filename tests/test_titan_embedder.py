"""The Titan embedder against a real HTTP server that speaks Bedrock's wire format and checks SigV4.

`bedrock_server` (tests/servers/bedrock.py) answers as Bedrock does, errors included, and the
environment it sets up keeps boto3 away from real AWS. Nothing here is mocked: each request is
signed, sent, verified and parsed exactly as in production.
"""

from __future__ import annotations

import base64
import io
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from smartgo_exporter.config import TitanEmbedderConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.embedders import Vector, load_embedder
from smartgo_exporter.embedders.titan import MAX_IMAGE_BYTES, ThrottleBackoff, TitanEmbedder
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable
from tests.servers.bedrock import SECRET_ACCESS_KEY, FakeBedrock

FAST_BACKOFF = ThrottleBackoff(first_seconds=0.01, max_seconds=0.05, budget_seconds=10)

MakeTitan = Callable[..., TitanEmbedder]


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def photo(seed: int) -> bytes:
    """A small distinct photo, as a PNG."""
    return encode(noise(seed))


def sent_image(body: dict[str, Any]) -> Image.Image:
    """The picture a request carried, decoded as Bedrock would."""
    image = Image.open(io.BytesIO(base64.b64decode(body["inputImage"])))
    image.load()
    return image


def vector(outcome: Vector | EmbeddingError) -> Vector:
    assert isinstance(outcome, np.ndarray), outcome
    return outcome


@pytest.fixture
def titan(bedrock_server: FakeBedrock) -> MakeTitan:
    """Builds a TitanEmbedder aimed at the fake server; keywords go to the config."""

    def build(*, backoff: ThrottleBackoff = FAST_BACKOFF, **config: Any) -> TitanEmbedder:
        settings = TitanEmbedderConfig(endpoint_url=bedrock_server.endpoint_url, **config)
        return TitanEmbedder(settings, backoff=backoff)

    return build


# What comes back


@pytest.mark.parametrize("dimension", [1024, 384, 256])
def test_vectors_have_the_configured_dimension_are_float32_and_unit_norm(
    titan: MakeTitan, dimension: int
) -> None:
    embedder = titan(dimension=dimension)

    outcomes = embedder.embed([photo(1), photo(2)])

    assert embedder.dim == dimension
    for outcome in outcomes:
        embedding = vector(outcome)
        assert embedding.shape == (dimension,)
        assert embedding.dtype == np.float32
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-6)


def test_identical_photos_get_identical_vectors(titan: MakeTitan) -> None:
    first, same, other = titan().embed([photo(7), photo(7), photo(8)])

    assert np.array_equal(vector(first), vector(same))
    assert float(np.dot(vector(first), vector(other))) < 0.5


def test_model_id_names_the_dimension_and_whether_titles_are_used(titan: MakeTitan) -> None:
    assert titan().model_id == "amazon.titan-embed-image-v1:1024"
    assert titan(dimension=256).model_id == "amazon.titan-embed-image-v1:256"
    assert titan(include_title=True).model_id == "amazon.titan-embed-image-v1:1024+title"


def test_an_embedder_section_of_type_titan_loads_the_titan_embedder(
    bedrock_server: FakeBedrock,
) -> None:
    settings = load_config(
        source={"type": "rest", "url": "https://pos.example/sales"},
        embedder={"type": "titan", "dimension": 384, "endpoint_url": bedrock_server.endpoint_url},
    )

    embedder = load_embedder(settings.embedder)

    assert isinstance(embedder, TitanEmbedder)
    assert embedder.model_id == "amazon.titan-embed-image-v1:384"
    assert bedrock_server.requests == 0


# What is sent


def test_the_request_body_has_the_documented_shape(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    titan(dimension=384).embed([photo(1)], captions=["Denim jacket"])

    body = bedrock_server.last_body
    assert set(body) == {"inputImage", "embeddingConfig"}
    assert body["embeddingConfig"] == {"outputEmbeddingLength": 384}
    assert sent_image(body).format == "JPEG"
    assert bedrock_server.per_model == {"amazon.titan-embed-image-v1": 1}


def test_titles_are_sent_as_input_text_only_with_include_title(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    embedder = titan(include_title=True, concurrency=1)

    outcomes = embedder.embed(
        [photo(1), photo(1), photo(1)], captions=["  Denim \n jacket ", None, "   "]
    )

    texts = [body.get("inputText") for body in bedrock_server.bodies]
    assert texts == ["Denim jacket", None, None]
    with_title, without, blank = (vector(outcome) for outcome in outcomes)
    assert not np.array_equal(with_title, without)
    assert np.array_equal(without, blank)


def test_captions_of_another_length_than_the_images_are_refused(titan: MakeTitan) -> None:
    with pytest.raises(ValueError, match="1 captions for 2 images"):
        titan().embed([photo(1), photo(2)], captions=["Denim jacket"])


def test_a_5000x4000_photo_is_sent_within_2048_px_and_5_mb(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    ramp = np.linspace(0, 255, 5000, dtype=np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None], (4000, 5000, 3))
    original = encode(Image.fromarray(np.ascontiguousarray(pixels)), "JPEG", quality=95)

    [outcome] = titan().embed([original])

    vector(outcome)
    sent = sent_image(bedrock_server.last_body)
    assert max(sent.size) <= 2048
    assert sent.size == (2048, 1638)
    assert len(base64.b64decode(bedrock_server.last_body["inputImage"])) < MAX_IMAGE_BYTES


def test_an_upright_rgb_jpeg_within_the_limits_is_sent_byte_for_byte(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    original = encode(noise(5, 800, 600), "JPEG", quality=85)

    titan().embed([original])

    assert base64.b64decode(bedrock_server.last_body["inputImage"]) == original


def test_a_cmyk_jpeg_is_converted_to_rgb_before_it_is_sent(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    titan().embed([encode(noise(6).convert("CMYK"), "JPEG")])

    assert sent_image(bedrock_server.last_body).mode == "RGB"


def test_a_photo_over_the_size_limit_is_sent_at_a_lower_jpeg_quality(
    bedrock_server: FakeBedrock,
) -> None:
    limit = 600_000  # pure noise at 1024x1024 is about 950 kB as a quality-90 JPEG
    embedder = TitanEmbedder(
        TitanEmbedderConfig(endpoint_url=bedrock_server.endpoint_url), max_image_bytes=limit
    )

    [outcome] = embedder.embed([encode(noise(3, 1024, 1024), "PNG", compress_level=1)])

    vector(outcome)
    assert len(base64.b64decode(bedrock_server.last_body["inputImage"])) <= limit


def test_transparency_is_laid_on_white(titan: MakeTitan, bedrock_server: FakeBedrock) -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (16, 16, 48, 48))

    titan().embed([encode(image)])

    pixels = np.asarray(sent_image(bedrock_server.last_body).convert("RGB"))
    assert pixels[2, 2].min() > 245
    red, green, _ = pixels[32, 32]
    assert red > 180
    assert green < 30


def test_a_photo_is_turned_upright_by_its_exif_orientation(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    sideways = encode(noise(4, 80, 40), "JPEG", exif=exif.tobytes())

    titan().embed([sideways])

    assert sent_image(bedrock_server.last_body).size == (40, 80)


def test_an_animated_gif_is_sent_as_its_first_frame(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((220, 0, 0), (0, 0, 220))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    titan().embed([gif])

    red, _, blue = np.asarray(sent_image(bedrock_server.last_body).convert("RGB"))[16, 16]
    assert red > 180
    assert blue < 40


def test_a_photo_that_cannot_be_decoded_fails_its_slot_without_a_call(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    broken, good = titan().embed([b"<html>not a photo</html>", photo(1)])

    assert isinstance(broken, EmbeddingError)
    assert broken.reason == "decode_failed"
    vector(good)
    assert bedrock_server.requests == 1


# Throttling and per-image failures


def test_a_burst_of_throttling_is_retried_until_every_image_is_embedded(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.throttle_next = 12
    embedder = titan(max_attempts=1, concurrency=4)  # only the embedder's own backoff retries

    outcomes = embedder.embed([photo(seed) for seed in range(4)])

    assert all(isinstance(outcome, np.ndarray) for outcome in outcomes)
    assert bedrock_server.throttled == 12
    assert bedrock_server.requests == 16


def test_botocore_standard_retries_absorb_throttling_before_the_embedder_backoff(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.throttle_next = 2
    no_own_retries = ThrottleBackoff(budget_seconds=0)

    [outcome] = titan(max_attempts=3, backoff=no_own_retries).embed([photo(1)])

    vector(outcome)
    assert bedrock_server.requests == 3


def test_an_image_still_throttled_when_its_budget_is_spent_is_marked_throttled(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.throttle_next = 10_000
    short = ThrottleBackoff(first_seconds=0.02, max_seconds=0.05, budget_seconds=0.5)

    [outcome] = titan(max_attempts=1, backoff=short).embed([photo(1)])

    assert isinstance(outcome, EmbeddingError)
    assert outcome.reason == "throttled"
    assert "ThrottlingException" in outcome.detail
    assert bedrock_server.requests >= 2


def test_a_validation_exception_fails_only_that_image(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.max_image_bytes = 100_000
    large = encode(noise(9, 600, 600), "PNG")  # about 300 kB as a JPEG

    outcomes = titan().embed([photo(1), large, photo(2), photo(3)])

    refused = outcomes[1]
    assert isinstance(refused, EmbeddingError)
    assert refused.reason == "validation"
    assert "ValidationException" in refused.detail
    for index in (0, 2, 3):
        vector(outcomes[index])


# Failures of the whole run


def test_a_wrong_dimension_from_the_server_raises_model_unavailable(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.dimension_override = 512

    with pytest.raises(ModelUnavailable, match="length 512, not the configured 1024"):
        titan().embed([photo(1)])


def test_a_run_wide_failure_stops_the_images_still_queued(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.dimension_override = 512
    bedrock_server.delay_seconds = 0.05

    with pytest.raises(ModelUnavailable):
        titan(concurrency=2).embed([photo(seed) for seed in range(40)])

    assert bedrock_server.requests <= 4


def test_a_wrong_secret_key_raises_model_unavailable_without_the_secret(
    titan: MakeTitan, bedrock_server: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_secret = "wrong/Secret+Key/not-the-one-the-server-knows"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)

    with pytest.raises(ModelUnavailable, match="InvalidSignatureException") as caught:
        titan().embed([photo(1)])

    everything = "".join(traceback.format_exception(caught.value))
    assert wrong_secret not in everything
    assert SECRET_ACCESS_KEY not in everything
    assert bedrock_server.requests == 1


def test_a_model_id_bedrock_does_not_know_raises_model_unavailable(titan: MakeTitan) -> None:
    with pytest.raises(ModelUnavailable, match="model identifier is invalid"):
        titan(model_id="amazon.titan-embed-image-v9").embed([photo(1)])


def test_a_model_the_account_may_not_use_raises_model_unavailable(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.denied_models.add("amazon.titan-embed-image-v1")

    with pytest.raises(ModelUnavailable, match="AccessDeniedException"):
        titan().embed([photo(1)])


def test_a_missing_region_fails_at_construction_without_a_call(
    bedrock_server: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")

    with pytest.raises(ModelUnavailable, match="no AWS region"):
        TitanEmbedder(TitanEmbedderConfig(endpoint_url=bedrock_server.endpoint_url))

    assert bedrock_server.requests == 0


# Concurrency


def test_no_more_than_concurrency_calls_are_in_flight(
    titan: MakeTitan, bedrock_server: FakeBedrock
) -> None:
    bedrock_server.delay_seconds = 0.2

    outcomes = titan(concurrency=4).embed([photo(seed) for seed in range(16)])

    assert all(isinstance(outcome, np.ndarray) for outcome in outcomes)
    assert bedrock_server.requests == 16
    assert bedrock_server.max_in_flight == 4
