"""The registry (`hf_tts.registry`) driven by the real huggingface_hub client, its `hf` CLI and datasets: every Hub
API call a team uses, answered as the Hub answers it."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from tests.registry_utils import request
from tests.test_registry_concurrency import postgres  # noqa: F401  (the fixture)

HF_CLI = str(Path(sys.executable).with_name("hf"))


def on_postgresql(request: pytest.FixtureRequest) -> str:
    """A fresh database on the test PostgreSQL (see test_registry_concurrency) for one test."""
    from tests.test_registry_concurrency import new_database

    return new_database(request.getfixturevalue("postgres"), f"api_{uuid.uuid4().hex[:12]}")


# Every call below runs against the default SQLite store and against PostgreSQL.
pytestmark = pytest.mark.parametrize(
    "local_hub", [pytest.param(None, id="sqlite"), pytest.param(on_postgresql, id="postgresql")], indirect=True
)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_revisions_tags_branches_and_short_shas(local_hub):
    api = HfApi()
    api.create_repo("org/weights")
    first = api.upload_file(path_or_fileobj=b"version one", path_in_repo="weights.bin", repo_id="org/weights")
    api.create_tag("org/weights", tag="v1.0", tag_message="first release")
    second = api.upload_file(path_or_fileobj=b"version two", path_in_repo="weights.bin", repo_id="org/weights")
    assert Path(hf_hub_download("org/weights", "weights.bin")).read_bytes() == b"version two"
    # A tag pins a revision; a short sha resolves too, for downloads and for model_info.
    assert Path(hf_hub_download("org/weights", "weights.bin", revision="v1.0")).read_bytes() == b"version one"
    assert api.model_info("org/weights", revision="v1.0").sha == first.oid
    assert api.model_info("org/weights", revision=first.oid[:8]).sha == first.oid
    assert Path(hf_hub_download("org/weights", "weights.bin", revision=first.oid[:7])).read_bytes() == b"version one"
    # parentCommit may be short as well.
    third = api.upload_file(
        path_or_fileobj=b"three", path_in_repo="w3.bin", repo_id="org/weights", parent_commit=second.oid[:10]
    )
    api.create_branch("org/weights", branch="feature/x", revision="v1.0")
    refs = api.list_repo_refs("org/weights", include_pull_requests=True)
    assert {(ref.name, ref.target_commit) for ref in refs.branches} == {("main", third.oid), ("feature/x", first.oid)}
    assert [(ref.name, ref.ref, ref.target_commit) for ref in refs.tags] == [("v1.0", "refs/tags/v1.0", first.oid)]
    assert refs.pull_requests == []
    # A branch with a '/' travels quoted as one path segment.
    on_branch = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/weights", revision="feature/x")
    assert api.list_repo_files("org/weights", revision="feature/x") == ["weights.bin", "x.txt"]
    assert api.model_info("org/weights", revision="feature/x").sha == on_branch.oid
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag("org/weights", tag="v1.0")
    assert exists.value.response.status_code == 409
    api.create_tag("org/weights", tag="v1.0", exist_ok=True)
    api.delete_tag("org/weights", tag="v1.0")
    api.delete_branch("org/weights", branch="feature/x")
    refs = api.list_repo_refs("org/weights")
    assert refs.tags == [] and [ref.name for ref in refs.branches] == ["main"]
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/weights", revision="v1.0")
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag("org/weights", tag="v1.0")
    with pytest.raises(HfHubHTTPError) as main:
        api.delete_branch("org/weights", branch="main")
    assert main.value.response.status_code == 403
    # Old revisions stay loadable by id after their branch is gone.
    assert api.model_info("org/weights", revision=on_branch.oid).sha == on_branch.oid
    # Commits carry their author; the history is newest first.
    commits = api.list_repo_commits("org/weights")
    assert [commit.commit_id for commit in commits[:3]] == [third.oid, second.oid, first.oid]
    assert commits[0].authors == ["local"] and commits[-1].title == "initial commit"


@pytest.mark.filterwarnings("ignore:About to delete a file")
def test_operations_apply_in_order_and_unchanged_files_make_no_commit(local_hub):
    api = HfApi()
    api.create_repo("org/ops")
    base = api.create_commit(
        "org/ops",
        [
            CommitOperationAdd("a.txt", b"a"),
            CommitOperationAdd("dir/b.txt", b"b"),
            CommitOperationAdd("dir/c.txt", b"c"),
        ],
        commit_message="three files",
    )
    # Add then delete one path: it ends deleted. Delete then add: it ends present, with the new content.
    after = api.create_commit(
        "org/ops",
        [
            CommitOperationAdd("new.txt", b"new"),
            CommitOperationDelete("new.txt"),
            CommitOperationDelete("a.txt"),
            CommitOperationAdd("a.txt", b"a2"),
            CommitOperationDelete("dir/", is_folder=True),
        ],
        commit_message="ordered",
    )
    assert api.list_repo_files("org/ops") == ["a.txt"]
    assert Path(hf_hub_download("org/ops", "a.txt")).read_bytes() == b"a2"
    # Preupload answers each file's current git oid, so the client drops unchanged files; nothing left -> no commit.
    answer = api.create_commit("org/ops", [CommitOperationAdd("a.txt", b"a2")], commit_message="again")
    assert answer.oid == after.oid
    assert [commit.commit_id for commit in api.list_repo_commits("org/ops")][:2] == [after.oid, base.oid]
    response, data = request(
        local_hub,
        "POST",
        "/api/models/org/ops/preupload/main",
        json.dumps(
            {"files": [{"path": "a.txt", "sample": "", "size": 2}, {"path": "z.txt", "sample": "", "size": 1}]}
        ).encode(),
        {"Content-Type": "application/json"},
    )
    files = {item["path"]: item for item in json.loads(data)["files"]}
    assert files["a.txt"]["oid"] == git_sha1(b"a2") and files["z.txt"]["oid"] is None
    assert all(item["uploadMode"] == "regular" and item["shouldIgnore"] is False for item in files.values())
    # The sample decides binary content; one that is not base64, not a string, or too long says nothing.
    samples = {"bin.dat": "AAE=", "bad.dat": "%%not base64", "typed.dat": 5, "long.dat": "AA" * 5000}
    response, data = request(
        local_hub,
        "POST",
        "/api/models/org/ops/preupload/main",
        json.dumps({"files": [{"path": p, "sample": v, "size": 2} for p, v in samples.items()]}).encode(),
        {"Content-Type": "application/json"},
    )
    modes = {item["path"]: item["uploadMode"] for item in json.loads(data)["files"]}
    assert modes == {"bin.dat": "lfs", "bad.dat": "regular", "typed.dat": "regular", "long.dat": "regular"}
    # A .gitignore sent with the preupload marks matching files to ignore.
    response, data = request(
        local_hub,
        "POST",
        "/api/models/org/ops/preupload/main",
        json.dumps(
            {
                "files": [
                    {"path": "logs/x.log", "sample": "", "size": 1},
                    {"path": "keep.log", "sample": "", "size": 1},
                ],
                "gitIgnore": "*.log\n!keep.log\n",
            }
        ).encode(),
    )
    ignored = {item["path"]: item["shouldIgnore"] for item in json.loads(data)["files"]}
    assert ignored == {"logs/x.log": True, "keep.log": False}
    # Deleting a missing path is refused as the Hub does.
    with pytest.raises(EntryNotFoundError):
        api.delete_file("nope.txt", "org/ops")


def test_etag_is_the_git_blob_sha1_so_hf_cache_verify_passes(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/verify")
    files = {"config.json": b'{"a": 1}', "sub/weights.txt": os.urandom(150_000).hex().encode(), "empty.txt": b""}
    api.create_commit("org/verify", [CommitOperationAdd(p, d) for p, d in files.items()], commit_message="files")
    response, _ = request(local_hub, "HEAD", "/org/verify/resolve/main/sub/weights.txt")
    assert response.getheader("ETag") == f'"{git_sha1(files["sub/weights.txt"])}"'
    tree = {entry.path: entry for entry in api.list_repo_tree("org/verify", recursive=True)}
    assert tree["config.json"].blob_id == git_sha1(files["config.json"])
    info = api.model_info("org/verify", files_metadata=True)
    assert {sibling.rfilename: sibling.blob_id for sibling in info.siblings} == {
        p: git_sha1(d) for p, d in files.items()
    }
    snapshot_download("org/verify")
    result = subprocess.run([HF_CLI, "cache", "verify", "org/verify"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checksums match" in result.stdout and "checked: 3" in result.stdout
    # The check is real: a damaged cached file fails it.
    damaged = next(Path(os.environ["HF_HOME"], "hub", "models--org--verify", "blobs").iterdir())
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes() + b"damage")
    result = subprocess.run([HF_CLI, "cache", "verify", "org/verify"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "git-sha1" in result.stdout + result.stderr


def test_conditional_and_range_requests_follow_http(local_hub):
    api = HfApi()
    api.create_repo("org/ranges")
    data = bytes(range(256)) * 4
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="org/ranges")
    url = "/org/ranges/resolve/main/blob.bin"
    response, body = request(local_hub, "HEAD", url)
    assert response.status == 200 and body == b"" and response.getheader("Content-Length") == str(len(data))
    assert response.getheader("X-Repo-Commit") == commit.oid
    etag = response.getheader("ETag")
    response, body = request(local_hub, "GET", url, headers={"If-None-Match": etag})
    assert response.status == 304 and body == b"" and response.getheader("ETag") == etag
    response, body = request(local_hub, "GET", url, headers={"If-None-Match": '"other"'})
    assert response.status == 200 and body == data
    response, body = request(local_hub, "GET", url, headers={"Range": "bytes=10-19"})
    assert response.status == 206 and body == data[10:20]
    assert response.getheader("Content-Range") == f"bytes 10-19/{len(data)}"
    response, body = request(local_hub, "GET", url, headers={"Range": "bytes=-5"})
    assert response.status == 206 and body == data[-5:]
    response, body = request(local_hub, "GET", url, headers={"Range": "bytes=1000-5000"})
    assert response.status == 206 and body == data[1000:]
    # Unsatisfiable -> 416; garbage, reversed or multiple ranges are ignored (RFC 9110) -> the whole file.
    response, _ = request(local_hub, "GET", url, headers={"Range": "bytes=5000-"})
    assert response.status == 416 and response.getheader("Content-Range") == f"bytes */{len(data)}"
    for garbage in ("bytes=abc", "pages=1-2", "bytes=9-3", "bytes=0-1,5-6", "bytes="):
        response, body = request(local_hub, "GET", url, headers={"Range": garbage})
        assert response.status == 200 and body == data, garbage
    # If-Range with another validator: the range is ignored.
    response, body = request(local_hub, "GET", url, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert response.status == 200 and body == data
    # A large file streams in pieces.
    big = os.urandom(3 << 20)
    api.upload_file(path_or_fileobj=big, path_in_repo="big.bin", repo_id="org/ranges")
    response, body = request(local_hub, "GET", "/org/ranges/resolve/main/big.bin", headers={"Range": "bytes=1048570-"})
    assert response.status == 206 and body == big[1048570:]
    assert Path(hf_hub_download("org/ranges", "big.bin")).read_bytes() == big


def test_tree_pages_expand_paths_info_and_copy(local_hub):
    api = HfApi()
    api.create_repo("org/tree")
    operations = [CommitOperationAdd(f"shards/part-{index:04d}.txt", str(index).encode()) for index in range(1203)]
    operations += [CommitOperationAdd("README.md", b"hello"), CommitOperationAdd("a/b/c.txt", b"deep")]
    first = api.create_commit("org/tree", operations, commit_message="many files")
    second = api.upload_file(path_or_fileobj=b"changed", path_in_repo="a/b/c.txt", repo_id="org/tree")
    # Pages of 1000 (Link header), followed by the client.
    listing = list(api.list_repo_tree("org/tree", path_in_repo="shards"))
    assert len(listing) == 1203 and listing[0].path == "shards/part-0000.txt"
    response, _ = request(local_hub, "GET", "/api/models/org/tree/tree/main/shards")
    assert 'rel="next"' in response.getheader("Link") and response.getheader("Link").startswith(f"<{local_hub.url}/")
    # A big model_info is also served gzipped to clients that accept it (huggingface_hub's does), same content.
    _, plain = request(local_hub, "GET", "/api/models/org/tree")
    response, packed = request(local_hub, "GET", "/api/models/org/tree", headers={"Accept-Encoding": "gzip, deflate"})
    assert response.getheader("Content-Encoding") == "gzip" and len(packed) < len(plain) / 4
    assert gzip.decompress(packed) == plain and len(json.loads(plain)["siblings"]) == 1205
    top = {entry.path: entry for entry in api.list_repo_tree("org/tree")}
    assert set(top) == {"README.md", "a", "shards"} and top["a"].tree_id
    expanded = {
        entry.path: entry for entry in api.list_repo_tree("org/tree", path_in_repo="a", recursive=True, expand=True)
    }
    assert expanded["a/b/c.txt"].last_commit.oid == second.oid
    assert expanded["a/b"].last_commit.oid == second.oid
    assert {entry.path: entry.last_commit.oid for entry in api.list_repo_tree("org/tree", expand=True)}[
        "README.md"
    ] == first.oid
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/tree", path_in_repo="missing"))
    info = api.get_paths_info("org/tree", ["README.md", "a", "missing.txt"], expand=True)
    assert [(type(item).__name__, item.path) for item in info] == [("RepoFile", "README.md"), ("RepoFolder", "a")]
    assert info[0].blob_id == git_sha1(b"hello") and info[0].last_commit.oid == first.oid
    # Copies (regular files are fetched and re-sent by the client, after a paths-info).
    api.create_commit(
        "org/tree",
        [
            CommitOperationCopy("a/b/c.txt", "copy.txt"),
            CommitOperationCopy("README.md", "docs/README.md", src_revision=first.oid),
        ],
        commit_message="copies",
    )
    assert Path(hf_hub_download("org/tree", "copy.txt")).read_bytes() == b"changed"
    assert Path(hf_hub_download("org/tree", "docs/README.md")).read_bytes() == b"hello"


def test_repo_lifecycle_settings_move_delete_and_squash(local_hub, tmp_path):
    api = HfApi()
    url = api.create_repo("org/life")
    assert url == f"{local_hub.url}/org/life" and url.repo_id == "org/life"
    assert api.create_repo("org/life", exist_ok=True).repo_id == "org/life"
    for index in range(3):
        api.upload_file(path_or_fileobj=f"v{index}".encode(), path_in_repo="f.txt", repo_id="org/life")
    api.upload_file(path_or_fileobj=b"other", path_in_repo="g.txt", repo_id="org/life")
    before = api.list_repo_commits("org/life")
    assert len(before) == 5
    api.super_squash_history("org/life", commit_message="squashed")
    after = api.list_repo_commits("org/life")
    assert [commit.title for commit in after] == ["squashed"]
    assert Path(hf_hub_download("org/life", "f.txt")).read_bytes() == b"v2"
    # The commit URL an answer gives resolves to that commit.
    commit = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/life")
    response, data = request(local_hub, "GET", commit.commit_url.removeprefix(local_hub.url))
    page = json.loads(data)
    assert response.status == 200 and page["id"] == commit.oid and page["changedPaths"] == ["x.txt"]
    assert page["parents"] == [after[0].commit_id]
    api.move_repo("org/life", "team/life")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/life")
    assert api.model_info("team/life").sha == commit.oid
    api.create_repo("org/taken")
    with pytest.raises(HfHubHTTPError) as taken:
        api.move_repo("team/life", "org/taken")
    assert taken.value.response.status_code == 409
    api.delete_repo("team/life")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("team/life")
    api.delete_repo("team/life", missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("team/life")


def test_list_models_filters_sorts_and_paginates(local_hub):
    api = HfApi()
    cards = {
        "acme/voice-a": "---\nlibrary_name: hf-tts\npipeline_tag: text-to-speech\ntags: [f5-tts, demo]\n---\n",
        "acme/voice-b": "---\nlibrary_name: transformers\npipeline_tag: text-to-speech\ntags: [demo]\n---\n",
        "beta/motion": "---\nlibrary_name: hf-tts\npipeline_tag: audio-to-motion\n---\n",
    }
    for repo_id, card in cards.items():
        api.create_repo(repo_id)
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id)
    for index in range(5):
        api.create_repo(f"bulk/repo-{index}")
    ids = lambda models: [model.id for model in models]  # noqa: E731
    assert set(ids(api.list_models(author="acme"))) == {"acme/voice-a", "acme/voice-b"}
    assert ids(api.list_models(search="motion")) == ["beta/motion"]
    assert set(ids(api.list_models(filter="hf-tts"))) == {"acme/voice-a", "beta/motion"}
    assert ids(api.list_models(filter=["hf-tts", "f5-tts"])) == ["acme/voice-a"]
    assert set(ids(api.list_models(pipeline_tag="text-to-speech"))) == {"acme/voice-a", "acme/voice-b"}
    assert ids(api.list_models(filter="transformers")) == ["acme/voice-b"]  # the library is one of the tags
    everything = ids(api.list_models(sort="created_at"))
    assert everything[0] == "bulk/repo-4" and len(everything) == 8
    assert len(ids(api.list_models(limit=3))) == 3
    response, data = request(local_hub, "GET", "/api/models?limit=3&sort=id&direction=1")
    assert [item["id"] for item in json.loads(data)] == ["acme/voice-a", "acme/voice-b", "beta/motion"]
    assert "cursor=3" in response.getheader("Link")
    response, data = request(local_hub, "GET", "/api/models?library=transformers")
    assert [item["id"] for item in json.loads(data)] == ["acme/voice-b"]
    # All pages, followed through Link by the client's paginator.
    response, data = request(local_hub, "GET", "/api/models?limit=2&sort=id&direction=1&cursor=6")
    assert [item["id"] for item in json.loads(data)] == ["bulk/repo-3", "bulk/repo-4"] and response.getheader(
        "Link"
    ) is None
    model = next(iter(api.list_models(author="acme", search="voice-a", cardData=True)))
    assert model.library_name == "hf-tts" and "f5-tts" in model.tags and model.card_data.library_name == "hf-tts"
    full = next(iter(api.list_models(search="voice-a", full=True)))
    assert [sibling.rfilename for sibling in full.siblings] == ["README.md"]
    result = subprocess.run([HF_CLI, "repos", "list", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {item["id"] for item in json.loads(result.stdout)} >= {"acme/voice-a", "bulk/repo-0"}


def test_pull_requests_open_and_merge(local_hub):
    api = HfApi()
    api.create_repo("org/prs")
    api.upload_file(path_or_fileobj=b"base", path_in_repo="a.txt", repo_id="org/prs")
    pr = api.upload_file(path_or_fileobj=b"proposal", path_in_repo="b.txt", repo_id="org/prs", create_pr=True)
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert api.list_repo_files("org/prs") == ["a.txt"]
    assert api.list_repo_files("org/prs", revision="refs/pr/1") == ["a.txt", "b.txt"]
    refs = api.list_repo_refs("org/prs", include_pull_requests=True)
    assert [(ref.ref, ref.target_commit) for ref in refs.pull_requests] == [("refs/pr/1", pr.oid)]
    # More commits onto the PR, while main moves on elsewhere.
    api.upload_file(path_or_fileobj=b"more", path_in_repo="c.txt", repo_id="org/prs", revision="refs/pr/1")
    api.upload_file(path_or_fileobj=b"main moved", path_in_repo="d.txt", repo_id="org/prs")
    response, data = request(local_hub, "GET", pr.pr_url.removeprefix(local_hub.url))
    assert response.status == 200 and json.loads(data)["status"] == "open"
    api.merge_pull_request("org/prs", 1)
    assert api.list_repo_files("org/prs") == ["a.txt", "b.txt", "c.txt", "d.txt"]
    # A PR that conflicts with main is refused.
    api.upload_file(path_or_fileobj=b"pr side", path_in_repo="a.txt", repo_id="org/prs", create_pr=True)
    api.upload_file(path_or_fileobj=b"main side", path_in_repo="a.txt", repo_id="org/prs")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.merge_pull_request("org/prs", 2)
    assert conflict.value.response.status_code == 409


def test_dataset_repos_serve_datasets_load_dataset(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/data", repo_type="dataset")
    rows = "".join(json.dumps({"text": f"line {index}", "label": index % 2}) + "\n" for index in range(20))
    api.create_commit(
        "org/data",
        [
            CommitOperationAdd("data/train.jsonl", rows.encode()),
            CommitOperationAdd("README.md", b"---\nlicense: mit\ntags: [speech]\n---\n# data\n"),
        ],
        commit_message="data",
        repo_type="dataset",
    )
    info = api.dataset_info("org/data")
    assert {sibling.rfilename for sibling in info.siblings} == {"data/train.jsonl", "README.md"}
    assert "speech" in info.tags
    assert [dataset.id for dataset in api.list_datasets(author="org")] == ["org/data"]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/data")  # a dataset is not a model
    script = textwrap.dedent(
        """
        import datasets
        ds = datasets.load_dataset("org/data", split="train")
        print(len(ds), ds[3]["text"], ds[3]["label"])
        """
    )
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"), "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "20 line 3 1"


def test_validate_yaml_answers_like_the_hub(local_hub):
    good = json.dumps({"content": "---\nlicense: mit\n---\n# x", "repoType": "model"}).encode()
    response, data = request(local_hub, "POST", "/api/validate-yaml", good)
    assert response.status == 200 and json.loads(data) == {"errors": [], "warnings": []}
    bad = json.dumps({"content": "---\na: [1\n---\n", "repoType": "model"}).encode()
    response, data = request(local_hub, "POST", "/api/validate-yaml", bad)
    assert response.status == 400 and "not valid YAML" in json.loads(data)["errors"][0]["message"]
