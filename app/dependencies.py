"""What routes receive and what they declare: typed dependencies (settings, catalogue, model), the API-key checks,
and the explicit marker of a route that runs the model (the middleware in app/limits.py reads both from the
matched route, before the body is read)."""

from __future__ import annotations

import hmac
from typing import Annotated, Callable, Optional

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.routing import Match

from app.catalog import Catalog
from app.limits import UNAUTHORISED
from app.pipeline import Embedder
from app.settings import Settings


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def catalog_dep(request: Request) -> Catalog:
    return request.app.state.catalog


def embedder_dep(request: Request) -> Embedder:
    return request.app.state.embedder


SettingsDep = Annotated[Settings, Depends(settings_dep)]
CatalogDep = Annotated[Catalog, Depends(catalog_dep)]
EmbedderDep = Annotated[Embedder, Depends(embedder_dep)]


def one_value_per_parameter(request: Request) -> None:
    """Every query parameter of the API takes one value: `?offset=1&offset=2` is refused, not read as the last one
    (which value a client meant is a guess; the schema says "integer", not "array")."""
    route = request.scope.get("route")
    declared = {p.alias for p in route.dependant.query_params} if isinstance(route, APIRoute) else set()
    repeated = sorted({k for k in request.query_params.keys() if k in declared
                       and len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise HTTPException(422, f"query parameter {', '.join(repeated)} is given more than once; send each once")


def key_valid(authorization: str, settings: Settings) -> bool:
    if not settings.api_keys:
        return True
    offered = authorization[7:].encode() if authorization.lower().startswith("bearer ") else b""
    # compare with every key, in constant time, so timing does not reveal a prefix
    valid = [hmac.compare_digest(offered, key.get_secret_value().encode()) for key in settings.api_keys]
    return any(valid)


def _check_key(request: Request, settings: Settings) -> None:
    if not key_valid(request.headers.get("authorization", ""), settings):
        raise HTTPException(401, UNAUTHORISED, headers={"WWW-Authenticate": "Bearer"})


def require_key(request: Request, settings: SettingsDep) -> None:
    _check_key(request, settings)


def require_identify_key(request: Request, settings: SettingsDep) -> None:
    if settings.identify_requires_key:
        _check_key(request, settings)


def _matched_route(routes: list, scope) -> Optional[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute) and route.matches(scope)[0] == Match.FULL:
            return route
    return None


def route_needing_key(routes: list, settings: Settings, scope) -> Optional[APIRoute]:
    """The route `scope` goes to, when its dependencies ask for a key under `settings`."""
    route = _matched_route(routes, scope) if settings.api_keys else None
    if route is None:
        return None
    checks = {d.dependency for d in route.dependencies}
    if require_key in checks or (require_identify_key in checks and settings.identify_requires_key):
        return route
    return None


def route_using_model(routes: list, scope) -> Optional[APIRoute]:
    """The route `scope` goes to, when it is marked `uses_model` (so needs a place in the model's queue)."""
    route = _matched_route(routes, scope)
    return route if route is not None and getattr(route.endpoint, "uses_model", False) else None


def uses_model(endpoint: Callable) -> Callable:
    """Marks a route that runs the model: it is admitted by app/backpressure.py (an upload place from its headers,
    a place in the model's queue once its body is in) and must take the embedder (EmbedderDep)."""
    endpoint.uses_model = True
    return endpoint
