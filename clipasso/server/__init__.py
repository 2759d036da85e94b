"""`clipasso serve`: the HTTP service (app, routes, guards), the durable job store and its worker."""
