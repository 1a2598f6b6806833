"""Helpers for the registry tests: one raw HTTP request to a running registry (for what no client sends)."""

from __future__ import annotations

import http.client


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(response, body bytes) of one request to `server` (a LocalHubServer) on its loopback address."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data
