"""The bridge's HTTP side: the app, its routes, the proxy, the edge and uvicorn."""
