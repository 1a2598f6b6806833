"""Benchmark of the registry (`hf-tts hub serve`) against the same framework serving the same files statically.

Three figures, each a ratio measured in one run on this machine (servers are separate processes, the load comes
from client processes over keep-alive loopback connections, with the headers huggingface_hub's client sends, so
gzip is accepted as it is by real clients):

1. small-file GET+HEAD requests per second: the registry's `resolve` vs Starlette `StaticFiles` under uvicorn
   (targets: at least 1,000/s, at least 0.5x static);
2. HEAD of a file and `model_info` on a 20,000-file repo vs a 10-file repo (target: within 1.5x);
3. a 100 MB download, registry vs static (target: at least 0.8x);
4. a large file (`--large-size`, 5 GB by default) pushed with the default client (Xet) and with LFS, twice each:
   client and registry peak RSS over idle (<= 0.5 GB, <= 200 MB), push time vs `cp` (<= 2x), re-push vs first push
   (< 0.2x), `hf_hub_download` vs `curl` of the same file from the registry (>= 0.5x). `--large-only` runs only this.

Then the pages: the time to serve a model card page with a plot on a 20,000-file repo (target: under 50 ms), next
to the same card on a 10-file repo, measured from a client on one keep-alive connection (first and warm requests).

    python scripts/bench_registry.py [--seconds 3] [--clients 2] [--big-mb 100] [--pages-only]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import shutil
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
    config = uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning", access_log=False, ws="none")
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


# --- large files: Xet and LFS pushes of one big file --------------------------------------------------------------

LARGE_CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    from huggingface_hub import HfApi, hf_hub_download
    action, url, repo, path = sys.argv[1:5]
    api = HfApi(endpoint=url)
    idle = rss("VmRSS")
    started = time.perf_counter()
    if action == "push":
        api.create_repo(repo, exist_ok=True)
        api.upload_file(path_or_fileobj=path, path_in_repo="model.safetensors", repo_id=repo)
    else:
        hf_hub_download(repo, "model.safetensors", cache_dir=path)
    print(json.dumps({"seconds": time.perf_counter() - started, "idle": idle, "peak": rss("VmHWM")}))
    """
)


class RssSampler:
    """Peak RSS of another process (the registry), sampled every 20 ms while a step runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.running = pid, 0, False

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

    def __enter__(self) -> RssSampler:
        import threading

        self.idle = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in units and text[-1:].isalpha() else (text, "")
    return int(float(number) * units[unit])


def bench_large(size: int) -> None:
    """Push one `size`-byte file with the default client (Xet) and with LFS (HF_HUB_DISABLE_XET=1), twice each, and
    download it; client and registry peak RSS over their idle RSS, times against `cp` and `curl` of the same bytes."""
    work = Path(tempfile.mkdtemp(prefix="bench-large-"))
    source = work / "model.safetensors"
    with open(source, "wb") as stream:  # incompressible, and different 64 MiB pieces (no dedupe within the file)
        for _ in range(size >> 26):
            stream.write(os.urandom(1 << 26))
        stream.write(os.urandom(size & ((1 << 26) - 1)))
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(work / "copy")], check=True)
    subprocess.run(["sync"], check=True)
    cp_seconds = time.perf_counter() - started
    (work / "copy").unlink()
    registry, url = start([sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(work / "reg"), "--quiet"])
    results: dict[str, dict] = {}
    try:
        for name, env in (("xet", {}), ("lfs", {"HF_HUB_DISABLE_XET": "1"})):
            for attempt in ("first", "second"):
                environment = {**os.environ, **env, "HF_HOME": str(work / f"home-{name}"), "HF_ENDPOINT": url}
                with RssSampler(registry.pid) as server_rss:
                    out = subprocess.run(
                        [sys.executable, "-c", LARGE_CLIENT, "push", url, f"bench/{name}", str(source)],
                        env=environment, capture_output=True, text=True, check=True,
                    )  # fmt: skip
                client = json.loads(out.stdout.strip().splitlines()[-1])
                results[f"{name}_{attempt}"] = {
                    **client,
                    "server_idle": server_rss.idle,
                    "server_peak": server_rss.peak,
                }
        # curl twice: saving the file as the clients do (both then pay the disk writes), and throwing it away
        curl_seconds: dict[str, float] = {}
        for name, target in (("file", str(work / "curl")), ("null", "/dev/null")):
            started = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", target, f"{url}/bench/xet/resolve/main/model.safetensors"], check=True)
            curl_seconds[name] = time.perf_counter() - started
        (work / "curl").unlink()
        for name in ("xet", "lfs"):
            environment = {**os.environ, "HF_HOME": str(work / "home-dl"), "HF_ENDPOINT": url}
            if name == "lfs":
                environment["HF_HUB_DISABLE_XET"] = "1"
            out = subprocess.run(
                [sys.executable, "-c", LARGE_CLIENT, "download", url, f"bench/{name}", str(work / f"dl-{name}")],
                env=environment, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[f"{name}_download"] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        registry.terminate()
        registry.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)  # several copies of the file: never leave them behind
    gib = size / (1 << 30)
    print(
        f"large file: {gib:.2f} GiB; cp {cp_seconds:.1f} s; curl of the registry's resolve {curl_seconds['file']:.1f} s"
        f" to a file, {curl_seconds['null']:.1f} s to /dev/null"
    )
    for name in ("xet", "lfs"):
        first, second = results[f"{name}_first"], results[f"{name}_second"]
        download = results[f"{name}_download"]
        print(
            f"{name}: push {first['seconds']:.1f} s = {first['seconds'] / cp_seconds:.2f}x cp (target <= 2x); "
            f"re-push {second['seconds']:.1f} s = {second['seconds'] / first['seconds']:.3f}x (target < 0.2x); "
            f"client peak +{(first['peak'] - first['idle']) / 2**20:.0f} MB (target <= 512); "
            f"registry peak +{(first['server_peak'] - first['server_idle']) / 2**20:.0f} MB (target <= 200); "
            f"download {gib * 1024 / download['seconds']:.0f} MB/s = "
            f"{curl_seconds['file'] / download['seconds']:.2f}x curl to a file (target >= 0.5x), "
            f"{curl_seconds['null'] / download['seconds']:.2f}x curl to /dev/null"
        )
    curl_s = {name: round(seconds, 2) for name, seconds in curl_seconds.items()}
    print(json.dumps({"cp_s": round(cp_seconds, 2), "curl_s": curl_s, **results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per request-rate measurement")
    parser.add_argument("--clients", type=int, default=2, help="client processes generating load")
    parser.add_argument("--big-mb", type=int, default=100, help="size of the download, in MB")
    parser.add_argument("--files", type=int, default=20000, help="files in the big repo")
    parser.add_argument("--pages-only", action="store_true", help="measure only the page render times")
    parser.add_argument("--large-size", default="5G", help="size of the large-file push (e.g. 5G, 500M; 0 skips it)")
    parser.add_argument("--large-only", action="store_true", help="measure only the large-file pushes")
    args = parser.parse_args()
    if args.large_only:
        bench_large(parse_size(args.large_size))
        return
    if args.pages_only:
        bench_pages(args.files)
        return

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
    bench_pages(args.files)
    if parse_size(args.large_size):
        bench_large(parse_size(args.large_size))


BENCH_CARD = """---
library_name: hf-tts
pipeline_tag: text-to-speech
license: apache-2.0
tags: [merge, f5-tts]
base_model: [bench/card-small]
---

# bench/card

A merge of two checkpoints.

## Merge details

| setting | value |
|---|---|
{rows}

## Distance of each source from the merge

![cosine distance per block](merge_distance.png)

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("bench/card")
```
"""


def page_times(url: str, path: str, repeats: int = 200) -> tuple[float, float, float]:
    """(first, median, 95th percentile) milliseconds to GET `path` completely, on one keep-alive connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Accept": "text/html", "Accept-Encoding": "gzip, deflate"})
        response = connection.getresponse()
        body = response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or b'id="model-card"' not in body:
            raise SystemExit(f"GET {path}: HTTP {response.status}")
    connection.close()
    warm = sorted(times[1:])
    return times[0], statistics.median(warm), warm[int(len(warm) * 0.95)]


def bench_pages(files: int) -> None:
    """The card page (markdown, badges, plot, sidebar) on a `files`-file repo and on a 10-file repo."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (800, 400), "white")
    ImageDraw.Draw(image).line([(20, 380), (780, 20)], fill="navy", width=3)
    plot = io.BytesIO()
    image.save(plot, format="PNG")
    card = BENCH_CARD.format(rows="\n".join(f"| setting {i} | `{i * 0.1:.1f}` |" for i in range(40))).encode()
    card_files = {"README.md": card, "merge_distance.png": plot.getvalue()}
    work = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    registry, url = start([sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(work), "--quiet"])
    try:
        commit(url, "bench/card-small", {**card_files, **{f"f{i}.txt": b"x%d" % i for i in range(8)}})
        commit(url, "bench/card-big", {**card_files, **{f"shard/{i:05d}.txt": b"x%d" % i for i in range(files - 2)}})
        small = page_times(url, "/bench/card-small")
        big = page_times(url, "/bench/card-big")
    finally:
        registry.terminate()
        registry.wait(timeout=30)
    print(
        f"card page with a plot: {files} files first {big[0]:.1f} ms, then median {big[1]:.1f} ms "
        f"(p95 {big[2]:.1f} ms); 10 files first {small[0]:.1f} ms, median {small[1]:.1f} ms "
        f"(p95 {small[2]:.1f} ms) (target: < 50 ms)"
    )
    print(json.dumps({"card_page_20k_first_ms": round(big[0], 1), "card_page_20k_median_ms": round(big[1], 2),
                      "card_page_20k_p95_ms": round(big[2], 2), "card_page_10_median_ms": round(small[1], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
