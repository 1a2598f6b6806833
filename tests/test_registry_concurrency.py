"""Several registry processes on one store: two `hf-tts hub serve` processes on one SQLite root, and on one real
PostgreSQL database (started here with Debian's initdb + pg_ctl) sharing one blob directory, take interleaved
concurrent pushes; every acknowledged commit must be in the history and every pushed file in the tree."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

PUSHES = 40


def find_postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, no fsync), as `postgresql://postgres@127.0.0.1:PORT`."""
    initdb, pg_ctl = find_postgres_bin("initdb"), find_postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        message = "PostgreSQL's initdb/pg_ctl are not installed (make postgres installs Debian's postgresql)"
        if os.environ.get("HF_TTS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # initdb refuses to run as root: run the server as the `postgres` user when we are root.
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="hf-tts-pg-"))
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-k {folder} -p {port} -h 127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"


def start_registry(root: Path, database: str | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(root), "--quiet"]
    if database:
        command += ["--database", database]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise AssertionError(f"registry did not start: {process.stderr.read()[-3000:]}")
    return process, url


def interleaved_pushes(root: Path, database: str | None, tmp_path: Path) -> None:
    first, url_a = start_registry(root, database)
    second, url_b = start_registry(root, database)
    try:
        HfApi(endpoint=url_a).create_repo("team/shared")
        HfApi(endpoint=url_b).create_repo("team/shared", exist_ok=True)

        def push(index: int) -> str:
            api = HfApi(endpoint=(url_a, url_b)[index % 2])
            operations = [CommitOperationAdd(f"pushes/{index:02d}.txt", f"push {index}".encode())]
            if index % 5 == 0:
                operations.append(CommitOperationAdd("shared.txt", f"last writer {index}".encode()))
            return api.create_commit("team/shared", operations, commit_message=f"push {index}").oid

        with ThreadPoolExecutor(max_workers=8) as pool:
            acknowledged = list(pool.map(push, range(PUSHES)))
        for url in (url_a, url_b):
            api = HfApi(endpoint=url)
            history = [commit.commit_id for commit in api.list_repo_commits("team/shared")]
            assert set(acknowledged) <= set(history) and len(history) == PUSHES + 1
            files = api.list_repo_files("team/shared")
            assert sorted(path for path in files if path.startswith("pushes/")) == [
                f"pushes/{i:02d}.txt" for i in range(PUSHES)
            ]
        cache = tmp_path / "cache"
        for index in (0, 17, 39):
            path = hf_hub_download("team/shared", f"pushes/{index:02d}.txt", endpoint=url_b, cache_dir=cache)
            assert Path(path).read_bytes() == f"push {index}".encode()
        # Optimistic locking across processes: both based on one head, exactly one lands.
        head = HfApi(endpoint=url_a).model_info("team/shared").sha
        results = []
        for url in (url_a, url_b):
            try:
                results.append(
                    HfApi(endpoint=url).upload_file(
                        path_or_fileobj=url.encode(), path_in_repo="race.txt", repo_id="team/shared", parent_commit=head
                    )
                )
            except HfHubHTTPError as error:
                results.append(error.response.status_code)
        assert sorted(str(type(item).__name__) for item in results) == ["CommitInfo", "int"] and 412 in results
    finally:
        for process in (first, second):
            process.terminate()
        for process in (first, second):
            _, stderr = process.communicate(timeout=30)
            assert "Traceback" not in stderr, stderr[-3000:]


def test_two_processes_on_one_sqlite_root_lose_no_commit(tmp_path):
    interleaved_pushes(tmp_path / "reg", None, tmp_path)


def test_two_processes_on_one_postgresql_database_lose_no_commit(postgres, tmp_path):
    interleaved_pushes(tmp_path / "shared-blobs", new_database(postgres, "registry_race"), tmp_path)


def test_the_api_on_postgresql(postgres, tmp_path, monkeypatch):
    """The main calls once more, against PostgreSQL (the registry's SQL must not be SQLite-only)."""
    from huggingface_hub import constants

    from hf_tts.registry import LocalHubServer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    database = new_database(postgres, "registry_api")
    with LocalHubServer(tmp_path / "reg", database=database) as server:
        api = HfApi(endpoint=server.url)
        api.create_repo("org/pg")
        first = api.upload_file(path_or_fileobj=b"---\ntags: [pg]\n---\n", path_in_repo="README.md", repo_id="org/pg")
        api.create_tag("org/pg", tag="v1")
        pr = api.upload_file(path_or_fileobj=b"p", path_in_repo="p.txt", repo_id="org/pg", create_pr=True)
        api.create_commit(
            "org/pg", [CommitOperationAdd(f"d/{i}.txt", str(i).encode()) for i in range(40)], commit_message="many"
        )
        for step in range(40):  # past one layer chain: a snapshot is written on PostgreSQL too
            api.upload_file(path_or_fileobj=f"v{step}".encode(), path_in_repo="d/0.txt", repo_id="org/pg")
        assert Path(hf_hub_download("org/pg", "d/0.txt", endpoint=server.url)).read_bytes() == b"v39"
        assert api.model_info("org/pg", revision="v1").sha == first.oid
        assert api.model_info("org/pg", revision=first.oid[:7]).sha == first.oid
        assert len(api.list_repo_files("org/pg")) == 41
        api.merge_pull_request("org/pg", pr.pr_num)
        assert "p.txt" in api.list_repo_files("org/pg")
        assert [model.id for model in api.list_models(filter="pg")] == ["org/pg"]
        api.super_squash_history("org/pg")
        api.delete_tag("org/pg", tag="v1")
        report = server.store.gc(grace_seconds=0)
        assert (
            report["commits"] > 40 and report["blobs"] == 40
        )  # "0" and v0..v38 of d/0.txt (refs/pr/1 keeps its own history)
        assert Path(hf_hub_download("org/pg", "d/5.txt", endpoint=server.url, force_download=True)).read_bytes() == b"5"
        started = time.monotonic()
        api.move_repo("org/pg", "team/pg")
        api.delete_repo("team/pg")
        assert time.monotonic() - started < 30
