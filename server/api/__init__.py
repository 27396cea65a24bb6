"""HTTP layer: thin Litestar controllers, one module per resource, msgspec schemas in ``schemas``."""
