"""xmodal: cross-modal retrieval toolkit and search engine.

Layout follows the data flow: ``data`` -> ``encoders`` -> ``methods`` (real-valued and
hashing) -> ``index`` -> ``evaluation`` / ``service``.
"""

__version__ = "0.1.0"
