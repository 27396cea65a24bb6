"""Dependencies shared by the controllers."""

from __future__ import annotations

from typing import TypeAlias

from litestar import Request
from litestar.di import NamedDependency

from server.context import AppParts, Call

#: How handlers ask for the authenticated call: ``call: CallDep``.
CallDep: TypeAlias = NamedDependency[Call]


def provide_call(request: Request) -> Call:
    """The authenticated :class:`Call` for this request (the middleware has set ``request.user``)."""
    parts: AppParts = request.app.state.parts
    client = request.client.host if request.client else None
    return Call(parts=parts, actor=request.user, client_address=client)
