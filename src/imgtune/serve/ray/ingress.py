"""The HTTP side of the Ray app: imgtune's API as a FastAPI ingress deployment.

The ingress reads and checks an upload the way ``imgtune serve`` does (``imgtune.serve.app``: size
limits, body timeout, multipart or raw body, the same JSON ``detail`` and status codes) and hands the
bytes to an ``ImgtuneReplica`` through Ray's handle with the adapter as the multiplexed model id, so
Ray's router picks a replica that holds that adapter. Decoding happens on the replica (it knows the
adapter's image size). A request whose replica died on the way (killed, its node lost) is sent again:
classifying is idempotent, and Ray's router no longer picks a dead replica.

The FastAPI app is a plain module-level one (Ray's standalone-app ingress); ``BindIngress`` points its
state at this process's ``ImgtuneIngress`` on the first request, so the endpoints and imgtune's
``AccessLog`` read ``app.state`` as they do in ``imgtune serve``.

Every response names the replica that answered in ``X-Imgtune-Replica``: a model replica for
``/v1/classify`` and ``/readyz``, the ingress replica for what it answers alone (the adapters listing,
metrics, a 404 for an unknown adapter).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
import asyncio
import logging
import time

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from imgtune.serve import page
from imgtune.serve.app import image_bytes, known
from imgtune.serve.catalog import NAME_PATTERN
from imgtune.serve.limits import RETRY_AFTER
from imgtune.serve.metrics import CONTENT_TYPE, AccessLog
from imgtune.serve.ray.metrics import IngressMetrics
from imgtune.serve.ray.settings import REPLICA_HEADER, Settings

log = logging.getLogger(__name__)
api = FastAPI(
    title="imgtune",
    description="Image classification with many adapters on one base model, on Ray Serve. Try it from the page at `/`.",
    docs_url=None,  # page.install serves /docs from local files
    redoc_url=None,
)
ATTEMPTS = 3  # a request whose replica died is sent again, this often at most
RESCAN_EVERY = 2.0
LOST = (RayActorError, ActorUnavailableError)


def answered(result: dict) -> JSONResponse:
    headers = {**result["headers"], REPLICA_HEADER: result["replica"]}
    return JSONResponse(result["body"], status_code=result["status"], headers=headers)


@api.post("/v1/classify")
async def classify(request: Request, adapter: str | None = Query(None), top_k: int = Query(5, ge=1, le=1000)):
    """The image as multipart field ``file`` or as the raw request body."""
    ingress = request.app.state.ingress
    name = await ingress.adapter_name(adapter)
    limits = ingress.settings.request_limits

    async def forward():
        data = await image_bytes(request, ingress.settings.max_bytes, limits.read_timeout)
        return await ingress.call("classify", name, data, top_k, adapter=name)

    try:
        return answered(await asyncio.wait_for(forward(), limits.request_timeout))
    except (TimeoutError, asyncio.TimeoutError):
        raise HTTPException(
            504, f"no answer within {limits.request_timeout:g} s", headers={"Connection": "close"}
        ) from None


@api.get("/v1/adapters")
async def adapters(request: Request):
    """Every adapter as ``imgtune serve`` lists it (``resident``: on some replica; ``loads``: summed over the
    replicas), with the replicas that hold it now (``resident_on``)."""
    ingress = request.app.state.ingress
    replicas = await ingress.replicas()
    return {
        "base": ingress.settings.base,
        "max_resident": ingress.settings.max_resident,
        "replicas": {r: {"resident": s["resident"], "ready": s["ready"]} for r, s in replicas.items()},
        "adapters": [listed(a, replicas) for a in list(ingress.catalog.adapters.values())],
    }


def listed(adapter, replicas: dict[str, dict]) -> dict:
    holders = [r for r, s in replicas.items() if adapter.name in s["resident"]]
    errors = [s["errors"][adapter.name] for s in replicas.values() if adapter.name in s["errors"]]
    return {
        **adapter.describe(),
        "resident": bool(holders),
        "loads": sum(s["load_counts"].get(adapter.name, 0) for s in replicas.values()),
        "last_error": errors[0] if errors else None,
        "resident_on": holders,
    }


@api.get("/healthz")
async def healthz(request: Request):
    ingress = request.app.state.ingress
    replicas = await ingress.replicas()
    return {
        "status": "ok",
        "adapters": len(ingress.catalog.adapters),
        "replicas": len(replicas),
        "batches": sum(s["batches"] for s in replicas.values()),
        "images": sum(s["images"] for s in replicas.values()),
    }


@api.get("/livez")
async def livez():
    return {"status": "ok"}


@api.get("/readyz", responses={503: {"description": "no replica's model answers (yet)"}})
async def readyz(request: Request):
    """Ready when a model replica answers a probe (Ray's health checks watch every replica)."""
    return answered(await request.app.state.ingress.call("ready"))


@api.get("/metrics", response_class=Response)
async def metrics(request: Request):
    """Prometheus text format: this ingress's request counters and every live replica's pool and queue."""
    ingress = request.app.state.ingress
    return Response(ingress.metrics.exposition(await ingress.replicas()), media_type=CONTENT_TYPE)


class BindIngress:
    """ASGI middleware, outermost: the app's state points at this process's ingress (one per process)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        state = scope["app"].state
        if scope["type"] in ("http", "websocket") and not hasattr(state, "ingress"):
            ingress = serve.get_replica_context().servable_object
            state.ingress, state.model, state.metrics = ingress, ingress.catalog, ingress.metrics
        await self.app(scope, receive, send)


@api.middleware("http")
async def name_the_replica(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault(REPLICA_HEADER, request.app.state.ingress.id)
    return response


page.install(api)  # the page at / and /docs, as imgtune serve has them
api.add_middleware(AccessLog)  # reads app.state.model (adapter names) and app.state.metrics
api.add_middleware(BindIngress)


@serve.deployment(name="ImgtuneIngress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class ImgtuneIngress:
    def __init__(self, replica, stats, settings: Settings):
        self.replica, self.stats, self.settings = replica, stats, settings
        self.catalog = settings.catalog()
        self.id = serve.get_replica_context().replica_id.unique_id
        self.metrics = IngressMetrics()
        self.last_rescan = 0.0

    async def adapter_name(self, name: str | None) -> str:
        """As ``imgtune.serve.app.known``; an unknown name rescans the adapter folders first (rate-limited)."""
        fresh = time.monotonic() - self.last_rescan > RESCAN_EVERY
        if name and NAME_PATTERN.fullmatch(name) and name not in self.catalog.adapters and fresh:
            self.last_rescan = time.monotonic()
            await asyncio.to_thread(self.catalog.scan)
        return known(self.catalog, name)

    async def call(self, method: str, *args, adapter: str | None = None) -> dict:
        """A replica's answer; the multiplexed id routes it to a replica holding ``adapter``."""
        handle = self.replica
        if adapter is not None and self.settings.route_by_adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        for attempt in range(ATTEMPTS):
            try:
                return await getattr(handle, method).remote(*args)
            except LOST as err:
                log.warning("replica lost during %s (attempt %d): %s", method, attempt + 1, type(err).__name__)
                if attempt == ATTEMPTS - 1:
                    raise HTTPException(
                        503, "no replica answered: try again", headers={"Retry-After": str(RETRY_AFTER)}
                    ) from None
                await asyncio.sleep(0.2 * (attempt + 1))

    async def replicas(self) -> dict[str, dict]:
        """Each live replica's last report (imgtune.serve.ray.metrics)."""
        try:
            return await asyncio.wait_for(self.stats.snapshot.remote(), 5)
        except (asyncio.TimeoutError, *LOST):
            return {}
