"""Accounts and tokens of the registry: the open single-user default, `hf-tts hub user|org|token`, roles, namespace
scopes, private repos, `--require-token-for-reads`, and `hf auth login` / `hf auth whoami` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from hypothesis import given
from hypothesis import strategies as st

from hf_tts.cli import main as hf_tts_main
from tests.fuzz import FUZZ
from tests.test_registry_concurrency import postgres  # noqa: F401  (the fixture)

HF_CLI = str(Path(sys.executable).with_name("hf"))


def hub(*args: str, root: Path, database: str | None = None) -> list[str]:
    return ["hub", *args, "--root", str(root), *(["--database", database] if database else [])]


def make_token(capsys, store, user: str, *extra: str) -> str:
    capsys.readouterr()
    assert hf_tts_main(hub("token", "create", "--user", user, *extra, root=store.root, database=store.database)) == 0
    return capsys.readouterr().out.strip()


def on_postgresql(request: pytest.FixtureRequest) -> str:
    from tests.test_registry_concurrency import new_database

    return new_database(request.getfixturevalue("postgres"), f"auth_{uuid.uuid4().hex[:12]}")


# The tests that use a running registry run on SQLite and on PostgreSQL.
backends = pytest.mark.parametrize(
    "local_hub", [pytest.param(None, id="sqlite"), pytest.param(on_postgresql, id="postgresql")], indirect=True
)


@backends
def test_open_mode_allows_public_writes_and_explains_private_repos(local_hub):
    api = HfApi()
    api.create_repo("anyone/model")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="anyone/model")
    assert api.list_repo_commits("anyone/model")[0].authors == ["local"]
    with pytest.raises(HfHubHTTPError) as private:
        api.create_repo("anyone/secret", private=True)
    assert private.value.response.status_code == 403
    assert "hf-tts hub token create" in private.value.server_message
    with pytest.raises(HfHubHTTPError) as settings:
        api.update_repo_settings("anyone/model", private=True)
    assert "hf-tts hub token create" in settings.value.server_message
    # A token the registry does not know (say, a huggingface.co token on the machine) is ignored in open mode.
    assert HfApi(token="hf_from_elsewhere").model_info("anyone/model").id == "anyone/model"


@backends
def test_users_orgs_tokens_roles_and_scopes(local_hub, capsys):
    root, database = local_hub.store.root, local_hub.store.database
    assert hf_tts_main(hub("user", "create", "alice", "--fullname", "Alice A", root=root, database=database)) == 0
    assert hf_tts_main(hub("user", "create", "bob", root=root, database=database)) == 0
    assert hf_tts_main(hub("org", "create", "team", root=root, database=database)) == 0
    alice = make_token(capsys, local_hub.store, "alice", "--name", "laptop")
    bob_read = make_token(capsys, local_hub.store, "bob", "--role", "read")
    alice_scoped = make_token(capsys, local_hub.store, "alice", "--namespace", "alice", "--name", "ci")
    assert alice.startswith("hf_") and len(alice) == 43
    # Tokens exist: anonymous writes need one now; public reads stay open.
    HfApi(token=alice).create_repo("alice/voice")
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="alice/voice")
    assert anonymous.value.response.status_code == 401 and "need a token" in anonymous.value.server_message
    assert HfApi().model_info("alice/voice").id == "alice/voice"
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="hf_guess").model_info("alice/voice")
    assert wrong.value.response.status_code == 401
    # Namespaces: one's own; an organisation only as a write member; a read token never writes.
    with pytest.raises(HfHubHTTPError) as not_member:
        HfApi(token=alice).create_repo("team/shared")
    assert not_member.value.response.status_code == 403
    assert hf_tts_main(hub("org", "add", "team", "alice", "--role", "write", root=root, database=database)) == 0
    assert hf_tts_main(hub("org", "add", "team", "bob", "--role", "read", root=root, database=database)) == 0
    HfApi(token=alice).create_repo("team/shared", private=True)
    with pytest.raises(HfHubHTTPError) as read_only:
        HfApi(token=bob_read).create_repo("bob/own")
    assert read_only.value.response.status_code == 403 and "read-only" in read_only.value.server_message
    HfApi(token=alice).create_repo("team/public")
    with pytest.raises(HfHubHTTPError) as scoped:
        HfApi(token=alice_scoped).upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="team/public")
    assert scoped.value.response.status_code == 403 and "may not write to 'team'" in scoped.value.server_message
    HfApi(token=alice_scoped).upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="alice/voice")
    # Private: members read it, everyone else sees no such repo, in listings too.
    assert HfApi(token=bob_read).model_info("team/shared").private is True
    for token in (None, alice_scoped):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info("team/shared")
    assert "team/shared" not in [model.id for model in HfApi().list_models()]
    assert "team/shared" in [model.id for model in HfApi(token=bob_read).list_models()]
    # Commits record the token's user.
    assert HfApi().list_repo_commits("alice/voice")[0].authors == ["alice"]
    # Listing shows no secret; revoking cuts the token off at once.
    capsys.readouterr()
    assert hf_tts_main(hub("token", "list", root=root, database=database)) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {item["name"] for item in listed} == {"laptop", "token", "ci"} and alice not in json.dumps(listed)
    laptop = next(item for item in listed if item["name"] == "laptop")
    assert laptop["hint"] == "..." + alice[-4:] and laptop["revoked"] is None
    assert hf_tts_main(hub("token", "revoke", str(laptop["id"]), root=root, database=database)) == 0
    with pytest.raises(HfHubHTTPError) as revoked:
        HfApi(token=alice).model_info("alice/voice")
    assert revoked.value.response.status_code == 401
    # Bad input to the admin commands: exit 2, one line.
    capsys.readouterr()
    assert hf_tts_main(hub("token", "create", "--user", "nobody", root=root, database=database)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nobody" in error
    assert hf_tts_main(hub("user", "create", "alice", root=root, database=database)) == 2
    assert "already exists" in capsys.readouterr().err
    assert hf_tts_main(hub("user", "create", "api", root=root, database=database)) == 2
    assert hf_tts_main(hub("token", "revoke", "999", root=root, database=database)) == 2


@backends
def test_hf_auth_login_and_whoami_through_the_cli(local_hub, capsys):
    root, database = local_hub.store.root, local_hub.store.database
    assert hf_tts_main(hub("user", "create", "carol", root=root, database=database)) == 0
    assert hf_tts_main(hub("org", "create", "lab", root=root, database=database)) == 0
    assert hf_tts_main(hub("org", "add", "lab", "carol", root=root, database=database)) == 0
    token = make_token(capsys, local_hub.store, "carol", "--name", "workstation")
    login = subprocess.run([HF_CLI, "auth", "login", "--token", token], capture_output=True, text=True, timeout=120)
    assert login.returncode == 0, login.stdout + login.stderr
    whoami = subprocess.run([HF_CLI, "auth", "whoami", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert whoami.returncode == 0, whoami.stdout + whoami.stderr
    assert "carol" in whoami.stdout and "lab" in whoami.stdout
    info = HfApi(token=token).whoami()
    assert info["name"] == "carol" and info["auth"]["accessToken"] == {
        "displayName": "workstation",
        "role": "write",
        "createdAt": info["auth"]["accessToken"]["createdAt"],
    }
    assert [org["name"] for org in info["orgs"]] == ["lab"]


@backends
def test_require_token_for_reads_and_read_only(local_hub, capsys):
    root, database = local_hub.store.root, local_hub.store.database
    HfApi().create_repo("pub/model")
    assert hf_tts_main(hub("user", "create", "dave", root=root, database=database)) == 0
    reader = make_token(capsys, local_hub.store, "dave", "--role", "read")
    local_hub.policy.require_token_for_reads = True
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi().model_info("pub/model")
    assert anonymous.value.response.status_code == 401 and "token for every read" in anonymous.value.server_message
    with pytest.raises(HfHubHTTPError):
        list(HfApi().list_models())
    assert HfApi(token=reader).model_info("pub/model").id == "pub/model"
    local_hub.read_only = True
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(token=reader).create_repo("dave/x")
    assert refused.value.response.status_code == 403 and "read-only" in refused.value.server_message


@backends
def test_the_single_static_token_still_works(local_hub):
    HfApi().create_repo("org/guarded")
    local_hub.token = "s3cret"
    with pytest.raises(HfHubHTTPError) as missing:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="guess").upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    assert wrong.value.response.status_code == 401
    commit = HfApi(token="s3cret").upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    assert HfApi().model_info("org/guarded").sha == commit.oid
    HfApi(token="s3cret").create_repo("org/hidden", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/hidden")
    assert HfApi(token="s3cret").model_info("org/hidden").private is True
    # Read-only hides private repos just the same.
    local_hub.read_only = True
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/hidden")


@FUZZ
@given(name=st.text(min_size=0, max_size=40), role=st.sampled_from(["read", "write", "admin", "owner", ""]))
def test_account_and_token_commands_answer_any_input_in_one_line(tmp_path_factory, capsys, name, role):
    """Whatever the name and role: exit 0, or exit 2 with exactly one line on stderr; never a traceback."""
    root = tmp_path_factory.mktemp("reg")
    for argv in (
        hub("user", "create", name, root=root),
        hub("org", "create", name, root=root),
        hub("token", "create", "--user", name, "--role", role, root=root),
        hub("token", "create", "--user", name, "--namespace", name, root=root),
    ):
        capsys.readouterr()
        try:
            code = hf_tts_main(argv)
        except SystemExit as error:  # argparse refusing a choice
            code = error.code
        error_text = capsys.readouterr().err.strip()
        assert code in (0, 2), argv
        if code == 2:
            assert len(error_text.splitlines()) == 1, error_text
