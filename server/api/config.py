"""``GET /api/config``: what clients need to know about this server (its PACS), for any authenticated role."""

from __future__ import annotations

from litestar import get

from server.api.deps import CallDep
from server.contract import messages
from server.security import require
from server.services.pacs_annotations import client_config


@get(
    "/api/config",
    guards=[require("uploader")],
    sync_to_thread=False,
    tags=["config"],
    summary="Client configuration",
)
def config(call: CallDep) -> messages.ClientConfig:
    return client_config(call)
