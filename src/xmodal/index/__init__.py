"""Search engine storage: FAISS indexes (:mod:`.vector`) over persistent, crash-safe
collections (:mod:`.collection`), and :func:`build_collection` to index a folder or dataset."""

from .collection import (AddReport, Collection, CollectionError, Hit, ImageItem, ReadOnlyError,
                         TextItem)
from .vector import IndexSpecError, VectorIndex

__all__ = ["Collection", "CollectionError", "ReadOnlyError", "Hit", "ImageItem", "TextItem", "AddReport",
           "VectorIndex", "IndexSpecError"]

from .build import (DEFAULT_IMAGE_ENCODER, DEFAULT_METHOD, DEFAULT_TEXT_ENCODER,  # noqa: E402
                    build_collection, plan_collection, scan_source)

__all__ += ["build_collection", "plan_collection", "scan_source", "DEFAULT_METHOD", "DEFAULT_IMAGE_ENCODER",
            "DEFAULT_TEXT_ENCODER"]

from .shards import RemoteShard, ShardedCollection, UnknownLabelError, open_shards  # noqa: E402

__all__ += ["ShardedCollection", "RemoteShard", "open_shards", "UnknownLabelError"]
