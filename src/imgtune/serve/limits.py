"""What one request may cost the server: its upload size and its decoded image size."""

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # stricter than decoding's own limit for files: a server decodes for strangers
MULTIPART_ALLOWANCE = 65536  # bytes of multipart framing allowed over MAX_BYTES
RAW_TYPES = ("application/octet-stream", "")  # a raw body of unknown type is sniffed by PIL
