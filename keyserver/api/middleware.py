"""ASGI middleware: request ids and the access log."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from keyserver.errors import InvalidRequest
from keyserver.logs import request_id_var
from keyserver.strict_json import STRICT_DECODER, DuplicateMember, NotJsonConstant

REQUEST_ID_HEADER = b"x-request-id"
# A caller-supplied id is kept only if it is short and plain, so it cannot forge log lines.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}\Z")

access_log = logging.getLogger("keyserver.access")

# JSON can carry a NUL character only as the escape \u0000 (raw control characters are invalid in JSON
# strings); it is one when preceded by an even number of backslashes (an escaped backslash followed by
# "u0000" is text, not NUL).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        http_scope: HTTPScope = scope
        request_id = _request_id_from(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %d",
                http_scope["method"],
                http_scope["path"],
                status,
                extra={
                    "fields": {
                        "method": http_scope["method"],
                        "path": http_scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    }
                },
            )
            request_id_var.reset(token)


def _request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex


# Deeper than any document this keyserver takes (policies, evidence, claims, JWKs are a few levels deep),
# and far below the depth at which a recursive decoder or encoder would exhaust the stack.
MAX_JSON_DEPTH = 64
# What a JSON body may hold, counted on its bytes before it is decoded: arrays and objects (``[`` and
# ``{``), and values (``,`` + 1). A request of the keyserver's holds tens to a few thousand (evidence is
# base64 strings; collateral and reference values, lists of digests); a 1 MB body of 340,000 empty
# arrays cost ~0.6 s of a worker's CPU to decode and walk before any authentication, enough for one
# caller to slow every tenant's releases a hundredfold (found by review). Brackets and commas inside
# strings count too: the bounds are far above any real request's, so that never refuses one.
MAX_JSON_CONTAINERS = 10_000
MAX_JSON_VALUES = 100_000


async def screen_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` for every route: what no route accepts, refused before any handler runs.

    * a NUL character in a path parameter or a JSON string: nothing a keyserver stores or looks up can
      contain one, PostgreSQL's text type cannot hold one (a query naming one fails in the driver), and
      SQLite would store what PostgreSQL refuses — refused alike on both;
    * JSON nested deeper than :data:`MAX_JSON_DEPTH`: the decoder would exhaust the stack (a
      ``RecursionError``, not a bad request) and so would any code walking the document;
    * a query parameter the route does not declare: ignoring it would turn a caller's typo
      (``tree_sise=``) or a parameter another version of the API understands into a silent default,
      as an unknown member of a JSON body is refused rather than ignored.
    """
    if any("\x00" in value for value in request.path_params.values() if isinstance(value, str)):
        raise InvalidRequest("a path parameter contains a NUL character")
    if request.scope.get("query_string"):
        _screen_query(request)
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    body = await request.body()
    if not body:
        return
    _screen_json_size(body)
    # The substring first (a C search): the regex's look-behind makes it try every position of the body.
    if b"\\u0000" in body and _JSON_NUL.search(body):
        raise InvalidRequest("the request body contains a NUL character (\\u0000) in a string")
    try:
        # The strict reader (keyserver/strict_json.py): the routes decode with msgspec, which keeps the
        # last of a duplicated member, where a proxy, a reviewer's tool or another parser may keep the
        # first; refused here, the routes only ever see bodies every parser reads alike.
        document = STRICT_DECODER.decode(body.decode("utf-8"))
    except RecursionError:
        raise InvalidRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:  # a ValueError too, but the routes' decoding would raise it as a 500
        raise InvalidRequest("the request body is not UTF-8 (JSON text is UTF-8)") from None
    except (DuplicateMember, NotJsonConstant) as exc:
        raise InvalidRequest(f"the JSON body is refused: {exc}") from None
    except ValueError:  # malformed, or not JSON: the route's own decoding says what is wrong
        return
    if _depth_exceeds(document, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")


def _screen_json_size(body: bytes) -> None:
    """Refuse a body with more arrays, objects or values than any request of the keyserver's has, before
    decoding it (bytes.count runs in C: ~1 ms a megabyte)."""
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        raise InvalidRequest(
            f"the JSON body holds more than {MAX_JSON_CONTAINERS} arrays and objects;"
            " no request needs that many"
        )
    if body.count(b",") + 1 > MAX_JSON_VALUES:
        raise InvalidRequest(
            f"the JSON body holds more than {MAX_JSON_VALUES} values; no request needs that many"
        )


# app.state key: each route handler's declared query parameters (by their names in the URL), read once
# from the models Litestar built for the app's routes.
_DECLARED_QUERY = "keyserver.declared_query_parameters"


def _screen_query(request: Request[Any, Any, Any]) -> None:
    """Refuse a query parameter the route does not declare, and a single-valued one given twice (which
    of the two a proxy in front and the keyserver each act on would be anybody's guess)."""
    names, repeatable = _declared_query_parameters(request.app, request.route_handler)
    seen: set[str] = set()
    for name, _value in request.query_params.multi_items():
        if name not in names:
            raise InvalidRequest(f"unknown query parameter for this route: {_shown(name)}")
        if name in seen and name not in repeatable:
            raise InvalidRequest(f"query parameter {_shown(name)} is given more than once")
        seen.add(name)


def _shown(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "…")


def _declared_query_parameters(app: Litestar, handler: object) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters ``handler`` declares (by their names in the URL), and those of them that take
    a list; read once per app from the models Litestar built for its routes."""
    declared: dict[int, tuple[frozenset[str], frozenset[str]]] | None = app.state.get(_DECLARED_QUERY)
    if declared is None:
        declared = {}
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                for route_handler, model in route.route_handler_map.values():
                    query = model.expected_query_params
                    declared[id(route_handler)] = (
                        frozenset(parameter.field_alias for parameter in query),
                        frozenset(parameter.field_alias for parameter in query if parameter.is_sequence),
                    )
        app.state[_DECLARED_QUERY] = declared
    return declared.get(id(handler), (frozenset(), frozenset()))


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether any container in ``document`` sits more than ``limit`` levels deep (iteratively)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
