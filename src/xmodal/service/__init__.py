"""HTTP search service (FastAPI) and web page over one collection: :func:`create_app`."""

from .app import create_app

__all__ = ["create_app"]
