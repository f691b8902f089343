"""What the API promises, for the OpenAPI schema: response models, the upload body and every error answer.

The endpoints read their bodies themselves (the size limit and the read timeout come before any parsing),
so FastAPI cannot infer the upload body: it is written out here. Errors are described per endpoint, each
with the reasons that produce it; tests/test_serve_page.py checks that every status an endpoint can raise
is listed.
"""

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability (softmax over the adapter's labels), rounded to 6 decimals")


class Classification(BaseModel):
    adapter: str = Field(description="the adapter that answered")
    predictions: list[Prediction] = Field(description="the top_k most likely labels, best first")


class AdapterSummary(BaseModel):
    # extra fields pass through: the engine may say more about an adapter than this documents
    model_config = ConfigDict(extra="allow")

    name: str
    method: str = Field(description="the imgtune method it was trained with (lora, loha, ...)")
    num_labels: int
    labels: list[str]
    image_size: int = Field(description="side of the square image the adapter's model takes")
    mixed_batch: bool = Field(description="shares one backbone pass with other adapters in a batch")


class AdapterInfo(AdapterSummary):
    resident: bool = Field(description="loaded on the base model now (else loaded on its next request)")
    loads: int = Field(description="times it was loaded onto the base model")
    last_error: str | None = Field(description="why its last load failed; null when it did not")
    bytes: int | None = Field(description="bytes its weights take on the model while resident; null when not")


class AdapterListing(BaseModel):
    base: str = Field(description="the base model every adapter runs on")
    max_resident: int | None = Field(description="most adapters loaded at once; null: no limit")
    max_resident_bytes: int | None = Field(description="most bytes of adapter weights loaded at once; null: no limit")
    resident_bytes: int = Field(description="bytes of adapter weights loaded now")
    adapters: list[AdapterInfo]


class Health(BaseModel):
    status: str
    adapters: int = Field(description="adapters the server can answer for")
    batches: int = Field(description="model calls so far")
    images: int = Field(description="images classified so far")


class Rescanned(BaseModel):
    added: list[str] = Field(description="adapters found since the last scan")
    adapters: int = Field(description="adapters known now")


class Deleted(BaseModel):
    deleted: str


class Status(BaseModel):
    status: str
    reason: str | None = Field(None, description="why the model does not answer (only when not ready)")


class Problem(BaseModel):
    detail: str = Field(description="what went wrong, in one line")


def binary(description: str) -> dict:
    # format: binary is what Swagger UI and code generators turn into a file upload; contentMediaType is 3.1's way
    return {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/octet-stream",
        "description": description,
    }


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image (JPEG, PNG, WebP, GIF, BMP, TIFF ...) as multipart field `file` or as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": binary("the image")}}
            },
            "image/*": {"schema": binary("the image bytes")},
            "application/octet-stream": {"schema": binary("the image bytes; the format is read from them")},
        },
    }
}


def header(description: str, kind: str = "string") -> dict:
    return {"description": description, "schema": {"type": kind}}


CLOSES = {"Connection": header("close: the connection is not reused")}


def problem(description: str, headers: dict | None = None) -> dict:
    """An error answer: JSON ``{"detail": "..."}``."""
    return {"model": Problem, "description": description, **({"headers": headers} if headers else {})}


ADMIN_AUTH = {
    401: problem("no or wrong bearer token", {"WWW-Authenticate": header("Bearer")}),
    403: problem("admin is off (start the server with --allow-admin and a token)"),
}
CLASSIFY_ERRORS = {
    400: problem(
        "no ?adapter= while several adapters are served, a multipart body without a `file` field, "
        "an empty image, or bytes that are not a readable image"
    ),
    404: problem("unknown adapter, or it was removed while the request waited"),
    408: problem("the body was not received within --read-timeout", CLOSES),
    413: problem(
        "body over --max-bytes, or an image over --max-pixels, --max-aspect or --max-decode-bytes "
        "(checked from its header, before decoding)"
    ),
    415: problem("not an image content type (the raw body's, or the multipart `file` part's)"),
    500: {
        "description": "the model failed on this request's batch group (text/plain); only that group's requests "
        "get it, and /readyz checks the model again",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    503: problem(
        "the queue is full (--max-queue): retry after Retry-After seconds; or the adapter's files cannot be "
        "loaded (no Retry-After; GET /v1/adapters shows the same last_error)",
        {"Retry-After": header("seconds to wait before retrying (queue full only)", "integer")},
    ),
    504: problem("no answer within --request-timeout", CLOSES),
}
ADMIN_ADD_ERRORS = {
    400: problem("a bad name or body, a path that cannot be resolved, or a folder that is not a servable adapter"),
    **ADMIN_AUTH,
    403: problem("admin is off, adding by path is off (no --adapter-root), or the path is outside the adapter root"),
    408: problem("the body was not received within --read-timeout", CLOSES),
    409: problem("an adapter of that name is already served"),
    413: problem("body over 4096 bytes (refused before parsing)"),
}
ADMIN_DELETE_ERRORS = {
    400: problem("a bad name"),
    **ADMIN_AUTH,
    404: problem("unknown adapter"),
    409: problem("it is the last adapter, or no other adapter could be loaded to take its place"),
}
NOT_READY = {503: {"model": Status, "description": "the model does not answer (yet): the reason is in `reason`"}}
PROMETHEUS = {200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
