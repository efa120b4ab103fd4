"""Turning photos into vectors. `load_embedder(config)` picks the backend named by `config.type`.

The contract (see `Embedder`) is deliberately about encoded bytes, not decoded images: each
backend decodes the way it is fastest for it (the local model uses JPEG draft mode to decode
straight at the size it needs; Titan re-encodes within its own limits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from smartgo_exporter.errors import EmbeddingError

if TYPE_CHECKING:
    from smartgo_exporter.config import EmbedderConfig

Vector = np.ndarray[Any, np.dtype[np.float32]]


class Embedder(Protocol):
    """An image embedding model.

    `model_id` names the model and its settings exactly enough that two embeddings with the same
    id are comparable (it is stored in the table's `embedding_model` column); `dim` is the
    vector length. `embed(images)` takes encoded photos (JPEG, PNG, WebP, GIF, ...) and returns,
    position for position, an L2-normalised float32 vector of length `dim` or the EmbeddingError
    that explains why that one image could not be embedded: one bad image never fails the batch.
    It raises only for failures of the model itself (ModelUnavailable), which no later image
    could escape: missing weights, refused credentials, a deployment answering the wrong shape.

    `captions`, when given, are the products' titles, position for position with `images`
    (None where a product has none). A multimodal model may embed them with the photo, and then
    says so in `model_id`, since such vectors are not comparable with image-only ones, and sets
    `include_title` (so a changed title means a new embedding); an image-only model ignores them.

        embedder = load_embedder(settings.embedder)
        vectors = embedder.embed([open("bag.jpg", "rb").read()], captions=["Leather tote"])
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def include_title(self) -> bool: ...

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]: ...


def load_embedder(config: EmbedderConfig) -> Embedder:
    """The Embedder for `config.type`, loaded and ready: a missing model fails here, not mid-run.

    Backends are imported only when chosen, so the local model's onnxruntime is not needed on
    AWS, nor boto3 offline.
    """
    from smartgo_exporter.config import TitanEmbedderConfig

    if isinstance(config, TitanEmbedderConfig):
        from smartgo_exporter.embedders.titan import TitanEmbedder

        return TitanEmbedder(config)
    from smartgo_exporter.embedders.local import LocalEmbedder

    return LocalEmbedder(config)
