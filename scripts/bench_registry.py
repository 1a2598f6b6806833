"""Benchmark of the registry (`hf-tts hub serve`) against the same framework serving the same files statically.

Three figures, each a ratio measured in one run on this machine (servers are separate processes, the load comes
from client processes over keep-alive loopback connections, with the headers huggingface_hub's client sends, so
gzip is accepted as it is by real clients):

1. small-file GET+HEAD requests per second: the registry's `resolve` vs Starlette `StaticFiles` under uvicorn
   (targets: at least 1,000/s, at least 0.5x static);
2. HEAD of a file and `model_info` on a 20,000-file repo vs a 10-file repo (target: within 1.5x);
3. a 100 MB download, registry vs static (target: at least 0.8x).

    python scripts/bench_registry.py [--seconds 3] [--clients 2] [--big-mb 100]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

STATIC_SERVER = textwrap.dedent(
    """
    import socket, sys, uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles
    app = Starlette(routes=[Mount("/static", StaticFiles(directory=sys.argv[1]))])
    # proto IPPROTO_TCP, so asyncio turns Nagle off on its connections (as uvicorn's own binding does)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0)); sock.listen(2048)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning", access_log=False, ws="none")
    uvicorn.Server(config).run(sockets=[sock])
    """
)


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise SystemExit(f"server did not start: {command}")
    return process, url


# What huggingface_hub's HTTP client (httpx2) sends with every request.
CLIENT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


def _hammer(args: tuple[str, list[tuple[str, str]], float]) -> int:
    """One client process: cycle through (method, path) on one keep-alive connection for `seconds`."""
    url, requests, seconds = args
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for method, path in requests:
            connection.request(method, path, headers=CLIENT_HEADERS)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{method} {path}: HTTP {response.status}")
            count += 1
    connection.close()
    return count


def rate(url: str, requests: list[tuple[str, str]], seconds: float, clients: int) -> float:
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        _hammer((url, requests, 0.3))  # warm up (connections, caches)
        started = time.perf_counter()
        counts = pool.map(_hammer, [(url, requests, seconds)] * clients)
        return sum(counts) / (time.perf_counter() - started)


def download_rate(url: str, path: str, repeats: int = 3) -> float:
    """MB/s of a full GET (median of `repeats`), reading 1 MiB at a time and dropping it."""
    parts = urlsplit(url)
    rates = []
    for _ in range(repeats):
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        size = 0
        while piece := response.read(1 << 20):
            size += len(piece)
        rates.append(size / (1 << 20) / (time.perf_counter() - started))
        connection.close()
    return statistics.median(rates)


def commit(url: str, repo_id: str, files: dict[str, bytes]) -> None:
    """Create `repo_id` and commit `files` in one NDJSON request (what huggingface_hub sends, minus preupload)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    namespace, name = repo_id.split("/")
    connection.request("POST", "/api/repos/create", json.dumps({"organization": namespace, "name": name}))
    connection.getresponse().read()
    lines = [json.dumps({"key": "header", "value": {"summary": "bench"}})]
    lines += [
        json.dumps(
            {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}
        )
        for path, data in files.items()
    ]
    connection.request("POST", f"/api/models/{repo_id}/commit/main", "\n".join(lines).encode())
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"commit to {repo_id} failed: {response.status} {body[:300]!r}")
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per request-rate measurement")
    parser.add_argument("--clients", type=int, default=2, help="client processes generating load")
    parser.add_argument("--big-mb", type=int, default=100, help="size of the download, in MB")
    parser.add_argument("--files", type=int, default=20000, help="files in the big repo")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    static_dir = work / "static"
    static_dir.mkdir()
    small = b'{"architectures": ["F5TTSModel"], "dim": 1024}\n'
    (static_dir / "config.json").write_bytes(small)
    big = os.urandom(1 << 20) * args.big_mb  # incompressible, identical bytes for both servers
    (static_dir / "big.bin").write_bytes(big)

    registry, registry_url = start(
        [sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(work / "reg"), "--quiet"]
    )
    static, static_url = start([sys.executable, "-c", STATIC_SERVER, str(static_dir)])
    try:
        commit(registry_url, "bench/small", {"config.json": small, **{f"f{i}.txt": b"x%d" % i for i in range(9)}})
        commit(
            registry_url,
            "bench/big",
            {"config.json": small, **{f"shard/{i:05d}.txt": b"x%d" % i for i in range(args.files - 1)}},
        )
        commit(registry_url, "bench/download", {"big.bin": big})
        results = {}

        pair = [("GET", "/bench/small/resolve/main/config.json"), ("HEAD", "/bench/small/resolve/main/config.json")]
        static_pair = [("GET", "/static/config.json"), ("HEAD", "/static/config.json")]
        results["registry_small_rps"] = rate(registry_url, pair, args.seconds, args.clients)
        results["static_small_rps"] = rate(static_url, static_pair, args.seconds, args.clients)

        head_small = [("HEAD", "/bench/small/resolve/main/config.json")]
        head_big = [("HEAD", "/bench/big/resolve/main/config.json")]
        results["head_10_rps"] = rate(registry_url, head_small, args.seconds, args.clients)
        results["head_20k_rps"] = rate(registry_url, head_big, args.seconds, args.clients)
        results["model_info_10_rps"] = rate(
            registry_url, [("GET", "/api/models/bench/small")], args.seconds, args.clients
        )
        results["model_info_20k_rps"] = rate(
            registry_url, [("GET", "/api/models/bench/big")], args.seconds, args.clients
        )

        results["registry_download_mbps"] = download_rate(registry_url, "/bench/download/resolve/main/big.bin")
        results["static_download_mbps"] = download_rate(static_url, "/static/big.bin")
    finally:
        for process in (registry, static):
            process.terminate()
            process.wait(timeout=30)

    small_ratio = results["registry_small_rps"] / results["static_small_rps"]
    head_ratio = results["head_10_rps"] / results["head_20k_rps"]
    info_ratio = results["model_info_10_rps"] / results["model_info_20k_rps"]
    download_ratio = results["registry_download_mbps"] / results["static_download_mbps"]
    print(f"machine: {os.cpu_count()} CPUs; {args.clients} client processes; {args.seconds:g} s per rate")
    print(
        f"small file GET+HEAD: registry {results['registry_small_rps']:.0f}/s, static {results['static_small_rps']:.0f}/s "
        f"-> {small_ratio:.2f}x static (targets: >= 1000/s, >= 0.5x)"
    )
    print(
        f"HEAD: 10 files {results['head_10_rps']:.0f}/s, {args.files} files {results['head_20k_rps']:.0f}/s "
        f"-> big repo takes {head_ratio:.2f}x the time (target <= 1.5x)"
    )
    print(
        f"model_info: 10 files {results['model_info_10_rps']:.0f}/s, {args.files} files {results['model_info_20k_rps']:.0f}/s "
        f"-> big repo takes {info_ratio:.2f}x the time (target <= 1.5x)"
    )
    print(
        f"{args.big_mb} MB download: registry {results['registry_download_mbps']:.0f} MB/s, static "
        f"{results['static_download_mbps']:.0f} MB/s -> {download_ratio:.2f}x static (target >= 0.8x)"
    )
    print(json.dumps({key: round(value, 1) for key, value in results.items()}))


if __name__ == "__main__":
    main()
