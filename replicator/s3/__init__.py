"""The S3 layer: one transport per endpoint (`transport`), SigV4 (`signing`), the object
operations the product needs (`operations`), listings (`listing`) and typed failures
(`errors`). Every S3 request of every command goes through it; nothing above it knows
of HTTP."""

from .listing import Listed
from .operations import KEPT_HEADERS, S3, Body, Head

__all__ = ["KEPT_HEADERS", "S3", "Body", "Head", "Listed"]
