"""Dependencies shared by the controllers."""

from __future__ import annotations

from litestar import Request

from server.context import AppParts, Call


def provide_call(request: Request) -> Call:
    """The authenticated :class:`Call` for this request (the middleware has set ``request.user``)."""
    parts: AppParts = request.app.state.parts
    client = request.client.host if request.client else None
    return Call(parts=parts, actor=request.user, client_address=client)
