"""Cross-modal hashing: every method returns packed binary codes compared by Hamming distance.

Modules (each registers its methods on import): ``unsupervised`` (LSH, CCA-ITQ, CVH, IMH,
CMFH, LSSH), ``supervised`` (SCM-seq/orth, SePH, DLFH), ``semi`` (SS-LPDP), ``deep``
(DCMH, SSAH, DJSRH, JDSH, UCCH). ``search.hamming_topk`` ranks codes through FAISS.
"""

from . import deep, semi, supervised, unsupervised  # noqa: F401

__all__ = ["unsupervised"]
