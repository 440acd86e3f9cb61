"""The Litestar application factory: ``keyserver.app:create_app()``.

With no arguments it serves the embedded default (SQLite in ./keyserver-data, software key backend),
configured from KEYSERVER_* environment variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from keyserver import __version__, evaluation
from keyserver.api.auth import (
    BEARER_SCHEME,
    provide_db,
    provide_key_backend,
    provide_principal,
    provide_release_log,
    provide_release_service,
)
from keyserver.api.health import healthz, readyz
from keyserver.api.keys import KeyController
from keyserver.api.limits import ReleaseLimitController
from keyserver.api.log import LogController
from keyserver.api.middleware import RequestContextMiddleware, screen_request
from keyserver.api.policies import PolicyController
from keyserver.api.problems import EXCEPTION_HANDLERS
from keyserver.api.protocol import ProtocolController
from keyserver.api.references import ReferenceController
from keyserver.api.tenants import TenantController, whoami
from keyserver.api.tpm import TpmAdminController, TpmEnrolmentController
from keyserver.api.witnesses import WitnessConfigController
from keyserver.attestation import AttestationIssuer
from keyserver.backends.base import KeyBackend
from keyserver.backends.factory import backend_from_settings
from keyserver.bootstrap import Announce, database_checks, prepare_data_dir, print_operator_token
from keyserver.config import Settings
from keyserver.db.session import Database
from keyserver.explorer import explorer_router
from keyserver.kek_identity import check_kek_identity, kek_recorded
from keyserver.logs import configure_logging
from keyserver.ratelimits import ReleaseLimiter
from keyserver.readiness import Readiness
from keyserver.release import ReleaseService
from keyserver.releaselog.group_commit import BatchLimits
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.witness.cosigning import CosigningStage


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def create_app(settings: Settings | None = None, *, announce: Announce = print_operator_token) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    db = Database(settings)
    state = State({"db": db, "settings": settings})

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        backend: KeyBackend | None = None
        witness_http: httpx.AsyncClient | None = None
        prestart: asyncio.Task[None] | None = None
        try:
            if settings.is_sqlite and settings.database_url is None:
                prepare_data_dir(settings)
            pool = evaluation.configure(settings.policy_eval_workers, settings.policy_eval_timeout_s)
            # In the background: starting a worker takes a second or so, and the start need not wait.
            prestart = pool.warm_up()
            # The database may be down while this worker starts (a worker replaced during an outage):
            # its checks run when it first answers; requests that need it get 503 until then. One attempt
            # now, before the key backend: the record of the KEK lives in the schema these checks verify.
            readiness = Readiness()
            for name, check in database_checks(db, announce):
                readiness.register(name, check)
            await readiness.start()
            # Once the database has recorded a KEK, a missing one is reported, never created afresh. While the
            # database cannot say (it is down), a missing KEK is created: the identity check below compares it
            # with the record as soon as the database answers and refuses to serve on a mismatch, so a KEK
            # made in an outage can never silently replace the one the stored keys were wrapped under.
            create_kek = not (readiness.ready and await kek_recorded(db))
            backend = backend_from_settings(settings, create_kek=create_kek)
            # A misconfigured HSM or Vault stops the start here, with its reason, not at the first release.
            await backend.health()
            # And the backend must hold the KEK the stored keys were wrapped under (or record it, at first
            # use): a start-up check like the others, run when the database answers.
            started_backend = backend
            readiness.register("key-encryption key identity", lambda: check_kek_identity(db, started_backend))
            state.key_backend = backend
            state.release_log = ReleaseLog(LogSigner(backend, settings.log_origin))
            state.release_service = ReleaseService(
                db,
                state.release_log,
                backend,
                AttestationIssuer(backend, settings.log_origin),
                ReleaseLimiter(db, settings),
                BatchLimits(
                    settings.release_batch_max,
                    settings.release_batch_wait_ms / 1000,
                    # SQLite has one writer: a second batch in flight would only wait for its lock.
                    1 if db.dialect == "sqlite" else settings.release_batches_in_flight,
                ),
            )
            witness_http = httpx.AsyncClient()
            state.cosigning = CosigningStage(
                db,
                state.release_log,
                witness_http,
                witness_timeout_s=settings.witness_timeout_s,
                wait_s=settings.cosign_wait_s,
                outbound=settings.witness_outbound,
            )
            state.release_service.witnessing = state.cosigning
            state.readiness = readiness
            await readiness.start()
            yield
        finally:
            if witness_http is not None:
                await witness_http.aclose()
            if backend is not None:
                await backend.aclose()
            if prestart is not None:
                prestart.cancel()
            evaluation.pool().close()
            await db.dispose()

    prometheus = PrometheusConfig(
        app_name="keyserver",
        prefix="keyserver",
        # Route templates, not raw paths: no tenant names in labels, bounded cardinality.
        group_path=True,
        exclude=["/metrics"],
    )
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            whoami,
            TenantController,
            LogController,
            TpmAdminController,
            TpmEnrolmentController,
            KeyController,
            ReleaseLimitController,
            WitnessConfigController,
            PolicyController,
            ReferenceController,
            ProtocolController,
            MetricsController,
            explorer_router,
        ],
        dependencies={
            "principal": Provide(provide_principal),
            "db": Provide(provide_db),
            "release_log": Provide(provide_release_log),
            "key_backend": Provide(provide_key_backend, sync_to_thread=False),
            "release_service": Provide(provide_release_service),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_request=screen_request,
        middleware=[prometheus.middleware],
        request_max_body_size=settings.max_request_bytes,
        lifespan=[lifespan],
        state=state,
        # Logging is ours (keyserver.logs): one JSON line per record.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="keyserver",
            version=__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER_SCHEME: SecurityScheme(
                        type="http", scheme="bearer", description="A keyserver token (ks1.…)"
                    )
                }
            ),
        ),
        debug=False,
    )
    # Outermost, around the router itself: route middleware would miss requests that match no route,
    # and every response (404s included) must carry its request id and reach the access log.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    return app
