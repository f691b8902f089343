"""What one request may cost the server: its upload size, its decoded size, its time, its place in line.

Memory: one request holds at most its upload (MAX_BYTES plus multipart framing) and one decode, bounded
from the image header by ``MAX_DECODE_BYTES`` (``imgtune.data.decode.decode_cost``: decoded pixels, the
RGB conversion and the eval resize). At most ``max_decodes`` decodes run at once, so the server's peak
from decoding is at most max_decodes x MAX_DECODE_BYTES; a waiting request holds only its resized image.
"""

import os
from dataclasses import dataclass

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # stricter than decoding's own limit for files: a server decodes for strangers
# lets a 40-megapixel RGB upload through (about 14 bytes a pixel), an RGBA one up to about 26 megapixels
MAX_DECODE_BYTES = 768 * 1024 * 1024
MAX_ASPECT = 20.0  # longer / shorter side
MAX_DECODES = os.cpu_count() or 1  # decoding is CPU-bound: more at once only adds memory, not speed
MAX_QUEUE = 1024  # decoded images waiting for the model; past it, 503 with Retry-After
READ_TIMEOUT = 30.0  # seconds to receive a whole request body
REQUEST_TIMEOUT = 60.0  # seconds from the request's headers to its answer (body, decode, queue, model)
SHUTDOWN_TIMEOUT = 10  # seconds SIGTERM waits for open requests before closing them
RETRY_AFTER = 1  # seconds, sent with a 503 when the queue is full
MULTIPART_ALLOWANCE = 65536  # bytes of multipart framing allowed over MAX_BYTES
RAW_TYPES = ("application/octet-stream", "")  # a raw body of unknown type is sniffed by PIL


@dataclass(frozen=True)
class RequestLimits:
    """The per-request bounds beyond upload size and pixels (those stay on the app's Limits)."""

    max_decode_bytes: int = MAX_DECODE_BYTES
    max_aspect: float = MAX_ASPECT
    max_decodes: int = MAX_DECODES
    max_queue: int = MAX_QUEUE
    read_timeout: float = READ_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
