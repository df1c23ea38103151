"""Pages for a person with a browser, working offline: the status page at ``/`` and the
API docs at ``/docs`` (Swagger UI) and ``/redoc``.

FastAPI's default docs load Swagger UI and ReDoc from a CDN, so on a machine without
internet ``/docs`` was a blank page. Here they follow FastAPI's documented self-hosting
recipe: the app is built with ``docs_url=None, redoc_url=None`` and these routes call
``get_swagger_ui_html`` / ``get_redoc_html`` with local URLs. The files come from the
``fastapi-offline`` package (Swagger UI's and ReDoc's release bundles, installed with
microzero), served under :data:`DOCS_ASSETS`; ReDoc's Google fonts are turned off.

The status page is ``services/api/static/status.html`` with its own small script and
stylesheet under :data:`PAGE_ASSETS`: it reads ``/status``, ``/checkpoints`` and
``/checkpoints/{id}/equity`` every few seconds and draws its charts as inline SVG, so
it too needs nothing from outside this server. (``microzero up`` has no Grafana.)
"""

from __future__ import annotations

from importlib.resources import files
from types import SimpleNamespace

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

DOCS_ASSETS = "/assets/docs"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
PAGE_ASSETS = "/assets/pages"  # status.js, status.css
OAUTH2_REDIRECT = "/docs/oauth2-redirect"  # FastAPI's default, which Swagger UI's "Authorize" returns to

router = APIRouter(include_in_schema=False)

# Read once: the page is static, its data comes from the JSON endpoints.
_STATUS_HTML = files("services.api").joinpath("static", "status.html").read_text(encoding="utf-8")


class Assets(StaticFiles):
    """Files of an installed package under `prefix`. Names itself as the request's route,
    so the request metrics count ``/assets/docs/{path}`` rather than "<unmatched>"
    (a mount, unlike a route, sets no ``scope["route"]``)."""

    def __init__(self, prefix: str, package: str) -> None:
        super().__init__(packages=[(package, "static")])
        self.route = SimpleNamespace(path=f"{prefix}/{{path}}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        await super().__call__(scope, receive, send)


def mount_assets(app: FastAPI) -> None:
    """Serve the docs' and the status page's files from the installed packages."""
    app.mount(DOCS_ASSETS, Assets(DOCS_ASSETS, "fastapi_offline"), name="docs-assets")
    app.mount(PAGE_ASSETS, Assets(PAGE_ASSETS, "services.api"), name="page-assets")


@router.get("/")
async def status_page() -> HTMLResponse:
    return HTMLResponse(_STATUS_HTML, headers={"Cache-Control": "no-cache"})


def _root(request: Request) -> str:
    """The mount prefix behind a proxy (``--root-path``), so asset URLs still resolve."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    app, root = request.app, _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get(OAUTH2_REDIRECT)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    app, root = request.app, _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        with_google_fonts=False,
    )
