"""Business logic of the API, free of HTTP: each function takes a :class:`server.context.Call`."""
