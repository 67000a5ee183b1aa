"""The Qdrant vector store: chunk vectors in a Qdrant collection (cosine distance, point id = chunk id).

Reaches a Qdrant server by URL (an API key is read from QDRANT_API_KEY), or runs Qdrant's local mode in a
folder or in memory, which needs no server. Local mode lets one client at a time open a folder, so threads
of one process (a server answering chats) take turns, and a second process gets a clear error.

Only vectors live here: the documents and chunks stay in the SQLite database beside it (`tinylm.rag.db`),
so retrieval reads chunk text from SQLite, not from payloads. Client and server errors become
`TinylmError`s naming where Qdrant was.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tinylm.errors import TinylmError

UPSERT_BATCH = 256
_FOLDER_LOCKS: dict[str, threading.RLock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def _folder_lock(path: Path) -> threading.RLock:
    """One lock per local-mode folder: Qdrant lets one client at a time open it, so threads take turns."""
    with _FOLDER_LOCKS_GUARD:
        return _FOLDER_LOCKS.setdefault(str(Path(path).resolve()), threading.RLock())


class QdrantVectors:
    """One Qdrant collection, created with `dim`-sized cosine vectors when it does not exist yet."""

    def __init__(
        self,
        collection: str,
        dim: int,
        *,
        url: str | None = None,
        path: Path | None = None,
        location: str | None = None,
    ):
        try:
            from qdrant_client import QdrantClient, models
        except ImportError:
            raise TinylmError("the qdrant backend needs qdrant-client: pip install qdrant-client") from None
        self.models = models
        self.collection = collection
        self.where = url or (str(path) if path else location or ":memory:")
        self._lock = _folder_lock(path) if path and not url else None
        if self._lock:
            self._lock.acquire()
        self.client = None
        try:
            with self._errors():
                if url:
                    self.client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
                elif path:
                    self.client = QdrantClient(path=str(path))
                else:
                    self.client = QdrantClient(location=location or ":memory:")
            self._ensure_collection(dim)
        except BaseException:
            self.close()  # local mode: free the folder for the next client
            raise

    def _ensure_collection(self, dim: int) -> None:
        with self._errors():
            if not self.client.collection_exists(self.collection):
                params = self.models.VectorParams(size=dim, distance=self.models.Distance.COSINE)
                self.client.create_collection(self.collection, vectors_config=params)
                return
            found = getattr(self.client.get_collection(self.collection).config.params.vectors, "size", None)
        if found != dim:
            raise TinylmError(
                f"Qdrant at {self.where}: collection {self.collection!r} holds vectors of size {found}, "
                f"expected {dim}"
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from qdrant_client.http.exceptions import ApiException

        try:
            yield
        except ApiException as err:
            raise TinylmError(f"Qdrant at {self.where}: {err}") from None
        except RuntimeError as err:  # local mode: the folder is locked by another client
            raise TinylmError(f"Qdrant local storage {self.where}: {err}") from None

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        assert len(ids) == len(vectors), f"{len(ids)} ids for {len(vectors)} vectors"
        with self._errors():
            for i in range(0, len(ids), UPSERT_BATCH):
                batch = self.models.Batch(
                    ids=[int(x) for x in ids[i : i + UPSERT_BATCH]],
                    vectors=vectors[i : i + UPSERT_BATCH].astype(np.float32).tolist(),
                )
                self.client.upsert(self.collection, points=batch)

    def delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._errors():
            selector = self.models.PointIdsList(points=[int(x) for x in ids])
            self.client.delete(self.collection, points_selector=selector)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        with self._errors():
            points = self.client.query_points(
                self.collection, query=query.astype(np.float32).tolist(), limit=k
            ).points
        return [(int(p.id), float(p.score)) for p in points]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._lock:
            self._lock.release()
            self._lock = None
