"""HTTP layer: routes, schemas, dependencies and error handlers."""
