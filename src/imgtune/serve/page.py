"""The page at ``/`` (try the adapters from a browser) and ``/docs`` (Swagger UI).

Both are served from files installed with Python packages, never from a CDN: a server on a closed
network, or a laptop on a plane, shows them as it shows them anywhere. The page is plain HTML, CSS and
JavaScript in ``static/`` that calls the same HTTP API as any client. ``/redoc`` is off: Redoc fetches its
logo from its own CDN.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs/static"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
router = APIRouter(include_in_schema=False)


def swagger_folder() -> Path | None:
    """Swagger UI's files as fastapi-offline installs them. (swagger-ui-bundle's Swagger UI 4 cannot
    show the OpenAPI 3.1 schemas FastAPI writes: it says "does not specify a valid version field".)"""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if all((folder / name).is_file() for name in SWAGGER_FILES) else None


def install(app: FastAPI) -> None:
    """Add the page, its files and /docs to ``app`` (created with docs_url=None, redoc_url=None)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="page")
    folder = swagger_folder()
    if folder is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=folder), name="swagger")
    app.state.swagger = folder is not None
    app.include_router(router)


@router.get("/", response_class=HTMLResponse)
async def page():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request):
    app = request.app
    if not app.state.swagger:
        return PlainTextResponse(
            "Swagger UI is not installed: pip install fastapi-offline (part of imgtune[serve]); "
            f"the schema is at {app.openapi_url}",
            status_code=404,
        )
    assets = request.scope.get("root_path", "") + DOCS_ASSETS  # behind a proxy that strips a path prefix
    return get_swagger_ui_html(
        openapi_url=request.scope.get("root_path", "") + app.openapi_url,
        title=f"{app.title} API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        # Swagger UI's default validator puts a badge from validator.swagger.io on the page
        swagger_ui_parameters={"validatorUrl": None},
    )
