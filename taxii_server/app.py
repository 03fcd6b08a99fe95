"""The Flask application: medallion's views over :class:`StoreBackend`, with what they lack.

Added around medallion's views: our own authentication (argon2id accounts from partners.yaml,
per account access), ``Accept`` negotiation that takes unversioned ``application/taxii+json``
and ``*/*``, TAXII error JSON for every error (never HTML, never a 500 for a client's mistake),
security headers, ``/healthz`` and the signing keys at ``/.well-known/jwks.json``. The objects
endpoints (GET, POST) are our own: pages are made of the exact stored bytes, not re-serialised.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Flask, Response, g, request
from medallion.common import get_timestamp
from medallion.exceptions import MedallionError
from medallion.views import collections as medallion_collections
from medallion.views import discovery as medallion_discovery
from medallion.views import manifest as medallion_manifest
from medallion.views import objects as medallion_objects
from sqlalchemy.engine import Engine
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from feeds.home import open_store
from feeds.keys import jwks
from feeds.metrics import exposition, metrics
from feeds.settings import Settings
from feeds.store import store_unavailable
from taxii_server.accounts import Accounts, FailureThrottle, PartnersFile, Principal
from taxii_server.audit import PollAudit
from taxii_server.backend import TAXII_MEDIA_TYPE, StoreBackend
from taxii_server.errors import (
    BadRequest,
    Forbidden,
    NotAcceptable,
    PayloadTooLarge,
    TaxiiServerError,
    Unauthorized,
    UnsupportedMediaType,
)
from taxii_server.params import parse_limit

log = logging.getLogger(__name__)
EXTENSION = "spampots_taxii"
REALM = 'Basic realm="SpamPots TAXII", charset="UTF-8"'
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
View = Callable[..., Any]
UNCOUNTED = frozenset({"healthz", "readyz", "metrics", "jwks", "openapi"})
STORE_RETRY_AFTER = 5  # seconds a client waits before asking again while the store is down


@dataclass
class TaxiiServer:
    """What the app's views share; ``app.extensions["spampots_taxii"]``."""

    settings: Settings
    engine: Engine
    partners: PartnersFile
    accounts: Accounts
    audit: PollAudit
    backend: StoreBackend


def create_app(settings: Settings) -> Flask:
    """The TAXII server over the store of ``settings`` (which must be initialised)."""
    engine = open_store(settings)
    partners = PartnersFile(settings.partners)
    audit = PollAudit(engine)
    backend = StoreBackend(engine, settings, audit, partners.current().producer.contact)
    throttle = FailureThrottle(settings.auth_failure_delay, settings.auth_failure_delay_max)
    accounts = Accounts(partners, throttle)
    server = TaxiiServer(settings, engine, partners, accounts, audit, backend)
    app = Flask("taxii_server")
    if settings.trusted_proxies:  # the client's address, for the login throttle, from the proxy
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.extensions[EXTENSION] = server
    # medallion's views find these on the app
    app.medallion_backend = backend  # type: ignore[attr-defined]
    app.taxii_config = {"max_page_size": settings.max_page_size}  # type: ignore[attr-defined]
    _add_routes(app, server)
    app.register_error_handler(Exception, _error_response)
    app.after_request(_add_security_headers)
    app.after_request(_count_request)
    return app


def _add_routes(app: Flask, server: TaxiiServer) -> None:
    def medallion(view: Any) -> View:
        return view.__wrapped__  # type: ignore[no-any-return]  # without its own login check

    objects_or_delete = medallion(medallion_objects.get_or_delete_object)
    routes: list[tuple[str, View, list[str]]] = [
        ("/taxii2/", medallion(medallion_discovery.get_server_discovery), ["GET"]),
        ("/<string:api_root>/", medallion(medallion_discovery.get_api_root_information), ["GET"]),
        (
            "/<string:api_root>/status/<string:status_id>/",
            medallion(medallion_discovery.get_status),
            ["GET"],
        ),
        (
            "/<string:api_root>/collections/",
            medallion(medallion_collections.get_collections),
            ["GET"],
        ),
        (
            "/<string:api_root>/collections/<string:collection_id>/",
            medallion(medallion_collections.get_collection),
            ["GET"],
        ),
        (
            "/<string:api_root>/collections/<string:collection_id>/manifest/",
            medallion(medallion_manifest.get_object_manifest),
            ["GET"],
        ),
        (
            "/<string:api_root>/collections/<string:collection_id>/objects/",
            functools.partial(_objects, server),
            ["GET", "POST"],
        ),
        (
            "/<string:api_root>/collections/<string:collection_id>/objects/<string:object_id>/",
            functools.partial(_object, server, objects_or_delete),
            ["GET", "DELETE"],
        ),
        (
            "/<string:api_root>/collections/<string:collection_id>/objects/<string:object_id>"
            "/versions/",
            medallion(medallion_objects.get_object_versions),
            ["GET"],
        ),
    ]
    for rule, view, methods in routes:
        endpoint = rule.strip("/").replace("<string:", "").replace(">", "") or "discovery"
        app.add_url_rule(rule, endpoint, _taxii_endpoint(server, view), methods=methods)
    app.add_url_rule("/healthz", "healthz", functools.partial(_healthz, server))
    app.add_url_rule("/readyz", "readyz", functools.partial(_readyz, server))
    app.add_url_rule("/metrics", "metrics", _metrics)
    app.add_url_rule("/.well-known/jwks.json", "jwks", functools.partial(_jwks, server))
    app.add_url_rule("/openapi.yaml", "openapi", _openapi)


def _taxii_endpoint(server: TaxiiServer, view: View) -> View:
    """Authenticate, negotiate the media type, then run the view."""

    @functools.wraps(view)
    def endpoint(**kwargs: Any) -> Any:
        principal = server.accounts.authenticate(
            request.headers.get("Authorization"), request.remote_addr or ""
        )
        if principal is None:
            raise Unauthorized(
                "missing or wrong credentials", hint="send HTTP Basic credentials of your account"
            )
        g.principal = principal
        if not accepts_taxii(request.headers.get("Accept")):
            raise NotAcceptable(
                f"cannot answer with a type in Accept: {request.headers.get('Accept')}",
                hint=f"accept {TAXII_MEDIA_TYPE}",
            )
        # medallion's own check wants the versioned type; the spec says unversioned means it
        request.environ["HTTP_ACCEPT"] = TAXII_MEDIA_TYPE
        return view(**kwargs)

    return endpoint


def _media_range(item: str) -> tuple[str, dict[str, str]]:
    media, *raw_params = (part.strip() for part in item.split(";"))
    params = {}
    for raw in raw_params:
        name, _, value = raw.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return media.lower(), params


def accepts_taxii(accept: str | None) -> bool:
    """Whether an Accept header admits TAXII 2.1 JSON (no header admits anything)."""
    if not accept or not accept.strip():
        return True
    for item in accept.split(","):
        media, params = _media_range(item)
        try:
            if float(params.get("q", "1")) <= 0:
                continue
        except ValueError:
            continue
        if media in ("*/*", "application/*"):
            return True
        if media == "application/taxii+json" and params.get("version", "2.1") == "2.1":
            return True
    return False


def _content_type_is_taxii(content_type: str | None) -> bool:
    if not content_type:
        return False
    media, params = _media_range(content_type)
    return media == "application/taxii+json" and params.get("version", "2.1") == "2.1"


def _taxii_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status=status, headers=headers, content_type=TAXII_MEDIA_TYPE)


def _objects(server: TaxiiServer, api_root: str, collection_id: str) -> Response:
    backend = server.backend
    if request.method == "GET":
        limit = parse_limit(request.args, server.settings.max_page_size)
        body, headers = backend.objects_envelope(api_root, collection_id, _args(), limit)
        return _taxii_response(body, headers=headers)
    request_time = get_timestamp()
    backend.collection_for(api_root, collection_id)
    if not g.principal.is_publisher:
        raise Forbidden(
            "this account may not write to collections", hint="only the publisher account writes"
        )
    if not _content_type_is_taxii(request.headers.get("Content-Type")):
        raise UnsupportedMediaType(
            f"Content-Type {request.headers.get('Content-Type')!r} is not TAXII 2.1 JSON",
            hint=f"send {TAXII_MEDIA_TYPE}",
        )
    try:
        envelope = orjson.loads(_read_body(server.settings.max_request_bytes))
    except orjson.JSONDecodeError as error:
        raise BadRequest(
            f"the request body is not JSON: {error}", hint="send a TAXII envelope"
        ) from None
    status = backend.add_objects(api_root, collection_id, envelope, request_time)
    return _taxii_response(orjson.dumps(status), status=202)


def _read_body(limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` (chunked too)."""
    too_large = PayloadTooLarge(
        f"the request body is larger than {limit} bytes", hint="send fewer objects per request"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    while chunk := request.stream.read(min(65536, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise too_large
    return b"".join(chunks)


def _object(
    server: TaxiiServer, medallion_view: View, api_root: str, collection_id: str, object_id: str
) -> Any:
    if request.method == "DELETE":
        return medallion_view(api_root=api_root, collection_id=collection_id, object_id=object_id)
    limit = parse_limit(request.args, server.settings.max_page_size)
    body, headers = server.backend.objects_envelope(
        api_root, collection_id, _args(), limit, object_id
    )
    return _taxii_response(body, headers=headers)


def _args() -> dict[str, str]:
    """Query parameters; a repeated one counts as its values joined by commas."""
    return {name: ",".join(request.args.getlist(name)) for name in request.args}


def _healthz(server: TaxiiServer) -> Response:
    try:
        with server.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        log.error("health check: the store does not answer: %s", error)
        return Response(
            orjson.dumps({"status": "store unreachable"}),
            status=503,
            content_type="application/json",
        )
    return Response(orjson.dumps({"status": "ok"}), content_type="application/json")


def _readyz(server: TaxiiServer) -> Response:
    """Ready: the store answers and every partner's publishing ran within twice its interval."""
    from feeds.status import readiness_problems

    try:
        with server.engine.connect() as connection:
            problems = readiness_problems(
                connection, server.partners.current(), dt.datetime.now(dt.UTC)
            )
    except sa.exc.SQLAlchemyError as error:
        log.error("readiness check: the store does not answer: %s", error)
        problems = ["the store does not answer"]
    body = {"status": "not ready", "problems": problems} if problems else {"status": "ready"}
    return Response(
        orjson.dumps(body), status=503 if problems else 200, content_type="application/json"
    )


def _metrics() -> Response:
    """Every process's Prometheus samples (the proxy keeps this from partners)."""
    body, content_type = exposition()
    return Response(body, content_type=content_type)


def _openapi() -> Response:
    """The OpenAPI document of this API (taxii_server/openapi.yaml)."""
    document = importlib.resources.files("taxii_server").joinpath("openapi.yaml").read_bytes()
    return Response(document, content_type="application/yaml")


def _jwks(server: TaxiiServer) -> Response:
    with server.engine.connect() as connection:
        keys = jwks(connection)
    return Response(orjson.dumps(keys), content_type="application/jwk-set+json")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_response(error: Exception) -> Response:
    headers: dict[str, str] = {}
    if isinstance(error, TaxiiServerError):
        status = error.http_status
        title, description = error.title, str(error)
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = REALM
    elif isinstance(error, MedallionError):
        status = int(error.status)
        title, description = _reason(status), error.message
    elif isinstance(error, HTTPException):
        status = error.code or 500
        plain = error.get_response()
        if status < 400:  # a redirect, e.g. to the URL with its trailing slash
            return plain  # type: ignore[return-value]
        headers.update(
            (k, v)
            for k, v in plain.headers.items()
            if k.lower() not in ("content-type", "content-length")
        )
        title, description = error.name, error.description or error.name
    elif isinstance(error, sa.exc.OperationalError):  # the store restarts, or is down
        log.error("%s %s: %s", request.method, request.path, store_unavailable(error).message)
        status, title = 503, _reason(503)
        description = "the store does not answer for the moment; try the same request again"
        headers["Retry-After"] = str(STORE_RETRY_AFTER)
    else:
        log.exception("internal error on %s %s", request.method, request.path)
        status, title, description = 500, "Internal Error", "the server failed; it is logged"
    resource = {"title": title, "description": description, "http_status": str(status)}
    return _taxii_response(orjson.dumps(resource), status=status, headers=headers)


def _count_request(response: Response) -> Response:
    if request.endpoint not in UNCOUNTED:
        principal: Principal | None = g.get("principal")
        label = principal.label if principal else "unauthenticated"
        try:
            metrics().taxii_requests.labels(partner=label, status=str(response.status_code)).inc()
        except OSError as error:  # a full or vanished metrics folder must not fail the poll
            log.error("cannot count the request in the metrics: %s", error)
    return response


def _add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
