"""The storefront's HTTP JSON API over its installed global models (FastAPI).

Routes (OpenAPI docs at ``/docs``):

- ``GET /v1/customers/{id}/<resource>`` for every installed model's use
  (:mod:`models.site_use`): ``recommendations?k=10`` (k from 1 to 100), ``churn-risk``;
  ``{id}`` is the site's own customer id, hashed with the site key on arrival;
- ``GET /v1/<resource>?top=N`` for a use that ranks customers (``churn-risk``), with
  each customer's own id when ``serve`` was given the export (``--own-ids``);
- ``GET /v1/model``: the run in use, when the server made it, rounds and the ε this site
  spent per model;
- ``GET /healthz``: liveness, no authentication.

Every ``/v1`` route needs ``Authorization: Bearer <token>``, the token ``serve`` keeps in a
private file (:func:`clients.model_commands.ensure_token`). Errors
are JSON ``{"detail": ...}``: 401 for a missing or wrong token, 404 for a customer the
site has no answer for, 422 for a bad ``k`` or ``top``, 503 when the model in use has no
model for the resource. Answers come from memory (:class:`clients.live_answers.LiveAnswers`);
the routes are those of the models installed when the app is built (a later run that adds
a model is served after a restart).
No customer id is ever logged: the command that runs the app turns the access log off.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clients.live_answers import LiveAnswers
from clients.own_ids import OWN_ID
from models import schema
from models.site_use import MAX_ITEMS, NoAnswer, SiteScores, SiteUse
from privacy.pseudonymise import customer_token

MAX_TOP = 100_000


def build_app(
    live: LiveAnswers, token: str, key: bytes, own_ids: Mapping[str, str] | None = None
) -> FastAPI:
    """The API over ``live``'s answers, guarded by ``token``; ids hashed with ``key``."""
    app = FastAPI(
        title="fedshop storefront API",
        summary="Answers about its customers from the federation's global models",
        version="1",
    )
    guarded = [Depends(BearerToken(token))]

    @app.get("/healthz", summary="liveness (no authentication)")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "run": live.current.installed.run})

    @app.get("/v1/model", dependencies=guarded, summary="the model run in use")
    async def model() -> JSONResponse:
        return JSONResponse(live.current.model_info())

    for use in live.current.uses.values():
        _add_customer_route(app, live, use, key, guarded)
        if use.ranks_customers:
            _add_ranking_route(app, live, use, own_ids, guarded)
    return app


_BEARER = HTTPBearer(auto_error=False, description="the token in the serve token file")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class BearerToken:
    """The dependency that lets a request through only with ``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        """Raise 401 unless the request carries the token (compared in constant time)."""
        if credentials is None:
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", _CHALLENGE
            )
        if not secrets.compare_digest(credentials.credentials.encode(), self._token):
            raise HTTPException(401, "invalid bearer token", _CHALLENGE)


def _scores(live: LiveAnswers, use: SiteUse) -> SiteScores:
    """``use``'s answers in the model in use (read once per request)."""
    scores = live.current.scores.get(use.resource)
    if scores is None:
        raise HTTPException(503, f"the model run in use has no model for {use.resource}")
    return scores


def _add_customer_route(
    app: FastAPI, live: LiveAnswers, use: SiteUse, key: bytes, guarded: list[Any]
) -> None:
    def respond(customer_id: str, items: int | None) -> JSONResponse:
        scores = _scores(live, use)
        try:
            return JSONResponse(scores.answer(customer_token(customer_id, key) or "", items))
        except NoAnswer as error:
            raise HTTPException(404, str(error)) from None

    path = f"/v1/customers/{{customer_id}}/{use.resource}"
    if use.default_items is None:

        async def one_record(customer_id: str) -> JSONResponse:
            return respond(customer_id, None)

        endpoint = one_record
    else:

        async def item_list(
            customer_id: str,
            k: Annotated[int, Query(ge=1, le=MAX_ITEMS, description="list length")] = (
                use.default_items
            ),
        ) -> JSONResponse:
            return respond(customer_id, k)

        endpoint = item_list
    app.add_api_route(path, endpoint, methods=["GET"], dependencies=guarded, summary=use.summary)


def _add_ranking_route(
    app: FastAPI,
    live: LiveAnswers,
    use: SiteUse,
    own_ids: Mapping[str, str] | None,
    guarded: list[Any],
) -> None:
    def ranking(top: Annotated[int, Query(ge=1, le=MAX_TOP)] = 100) -> JSONResponse:
        rows = _scores(live, use).table().head(top).to_dict("records")
        if own_ids is not None:
            for row in rows:
                row[OWN_ID] = own_ids.get(row[schema.CUSTOMER])
        return JSONResponse(rows)

    app.add_api_route(
        f"/v1/{use.resource}",
        ranking,
        methods=["GET"],
        dependencies=guarded,
        summary=f"{use.summary} (the top N)",
    )
