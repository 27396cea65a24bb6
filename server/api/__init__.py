"""HTTP layer: thin Litestar controllers, one module per resource, the msgspec structs of the wire contract are ``server.contract.messages``."""
