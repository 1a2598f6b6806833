"""The registry's pages: what a person opens in a browser, under the Hub's URLs (`/models`, `/{namespace}`,
`/{namespace}/{name}`, `.../tree/{rev}/{path}`, `.../blob/{rev}/{path}`, `.../commits/{rev}`, `.../commit/{sha}`).

Server-rendered with Jinja (autoescaped), no JavaScript at all: every page works with scripts off, and the
Content-Security-Policy (`SecurityHeaders`) forbids scripts outright, so even a sanitiser bug in a model card could
not run one. Cards are rendered by markdown-it and sanitised by nh3 (ammonia): no script, no event handler, no
`javascript:` URL survives; relative image and link targets are pointed at the repo's files.

Who sees what is decided by the same `Auth` as the API. A browser signs in by posting a token once: it is kept in
an HttpOnly, SameSite=Lax cookie and checked on every request like a bearer token (so revoking the token signs the
browser out, several registry processes need no shared session state, and the database still holds only token
hashes). Private repos appear nowhere (listings, search facets, base-model links) for those who may not read them.

What a commit shows never changes, so rendered cards, file summaries and safetensors headers are cached by commit
or blob; a card page on a 20,000-file repo costs a few database reads and one template render.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import math
import posixpath
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hf_tts.errors import InputError
from hf_tts.file_utils import parse_safetensors_header, safetensors_header_length
from hf_tts.registry.auth import Principal
from hf_tts.registry.cards import FRONT_MATTER, MAX_CARD_BYTES, card_strings, card_tags
from hf_tts.registry.errors import RESERVED_NAMESPACES, RegistryError, validate_repo_id, validate_repo_path
from hf_tts.registry.store import LRU, Commit, Entry, Repo, Tree

if TYPE_CHECKING:
    from hf_tts.registry.app import Registry

SESSION_COOKIE = "hf_tts_session"
SESSION_SECONDS = 7 * 24 * 3600
LIST_PAGE = 30
TREE_PAGE = 500
COMMITS_PAGE = 50
CHANGED_FILES_SHOWN = 1000
TENSOR_ROWS_SHOWN = 3000
HIGHLIGHT_BYTES = 256 << 10  # text files up to this size are highlighted; up to `TEXT_BYTES` shown plain
TEXT_BYTES = 1 << 20
MEDIA_SHOWN = 12
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a")

# No script may run, from any source; images and media only from this registry (a card cannot make the browser
# fetch an outside tracker either); forms only post here. Responses that are not pages (files, JSON) are also
# sandboxed, so an HTML file uploaded to a repo and opened from its download link runs nothing.
PAGE_CSP = (
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
FILE_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'self'; sandbox"


class SecurityHeaders:
    """ASGI middleware adding the Content-Security-Policy and `nosniff` to every answer (pure ASGI: it costs the
    API's hot paths a header append, not a request/response round trip through Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                is_page = any(key == b"content-type" and value.startswith(b"text/html") for key, value in headers)
                headers += [
                    (b"content-security-policy", (PAGE_CSP if is_page else FILE_CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- per-registry caches ------------------------------------------------------------------------------------------


@dataclass
class _WebCache:
    cards: LRU = field(default_factory=lambda: LRU(256))  # (commit id, revision) -> RenderedCard
    summaries: LRU = field(default_factory=lambda: LRU(256))  # commit id -> RepoSummary
    headers: LRU = field(default_factory=lambda: LRU(64))  # blob sha256 -> SafetensorsView | error text
    texts: LRU = field(default_factory=lambda: LRU(64))  # (blob sha256, path) -> highlighted HTML


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache(registry: Registry) -> _WebCache:
    cache = _CACHES.get(registry)
    if cache is None:
        cache = _CACHES.setdefault(registry, _WebCache())
    return cache


# --- URLs -----------------------------------------------------------------------------------------------------------


class Urls:
    """Every link a page holds, under the public URL's path (a registry behind a proxy at `/models-hub/` works)."""

    def __init__(self, public_url: str):
        self.prefix = urlsplit(public_url).path.rstrip("/")

    def home(self) -> str:
        return f"{self.prefix}/"

    def models(self, **params: Any) -> str:
        query = urlencode({key: value for key, value in params.items() if value not in (None, "", 0)})
        return f"{self.prefix}/models" + (f"?{query}" if query else "")

    def namespace(self, namespace: str) -> str:
        return f"{self.prefix}/{quote(namespace)}"

    def repo(self, repo_id: str, revision: str | None = None) -> str:
        url = f"{self.prefix}/{repo_id}"
        return url if revision in (None, "main") else f"{url}?{urlencode({'revision': revision})}"

    def _at(self, repo_id: str, kind: str, revision: str, path: str = "") -> str:
        url = f"{self.prefix}/{repo_id}/{kind}/{quote(revision, safe='')}"
        return f"{url}/{quote(path)}" if path else url

    def tree(self, repo_id: str, revision: str, path: str = "", page: int = 0) -> str:
        url = self._at(repo_id, "tree", revision, path)
        return f"{url}?p={page}" if page else url

    def blob(self, repo_id: str, revision: str, path: str, **params: Any) -> str:
        query = urlencode({key: value for key, value in params.items() if value})
        return self._at(repo_id, "blob", revision, path) + (f"?{query}" if query else "")

    def resolve(self, repo_id: str, revision: str, path: str, download: bool = False) -> str:
        return self._at(repo_id, "resolve", revision, path) + ("?download=true" if download else "")

    def commits(self, repo_id: str, revision: str, page: int = 0) -> str:
        url = self._at(repo_id, "commits", revision)
        return f"{url}?p={page}" if page else url

    def commit(self, repo_id: str, oid: str) -> str:
        return f"{self.prefix}/{repo_id}/commit/{oid}"

    def static(self, name: str) -> str:
        return f"{self.prefix}/-/static/{name}?v={_static_files()[name][2]}"

    def login(self, next_url: str | None = None) -> str:
        return f"{self.prefix}/-/login" + (f"?{urlencode({'next': next_url})}" if next_url else "")

    def logout(self) -> str:
        return f"{self.prefix}/-/logout"


# --- templates and formatting ---------------------------------------------------------------------------------------


def _human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _short_date(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        moment = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@functools.cache
def _templates() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("hf_tts.registry", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(size=_human_size, date=_short_date, number=lambda value: f"{value:,}")
    return environment


@functools.cache
def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, media type, short digest for cache-busting URLs). The highlighting styles come from pygments,
    so they always match the classes it emits."""
    from pygments.formatters import HtmlFormatter

    css = resources.files("hf_tts.registry").joinpath("static/registry.css").read_bytes()
    highlight = HtmlFormatter(style="default").get_style_defs(".highlight").encode()
    files = {"registry.css": css, "highlight.css": highlight}
    return {name: (body, "text/css", hashlib.sha256(body).hexdigest()[:12]) for name, body in files.items()}


# --- card rendering -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedCard:
    html: str
    embedded: frozenset[str]  # repo paths the card already shows (not repeated in the media gallery)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HUB_REPO_LINK = re.compile(r"^https://huggingface\.co/([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/?$")
_CARD_TAGS = {"audio", "source"}
_CARD_ATTRIBUTES = {
    "a": {"href", "title", "hreflang"},
    "img": {"src", "alt", "title", "width", "height", "align"},
    "audio": {"src", "controls"},
    "source": {"src", "type"},
    "code": {"class"},
    "span": {"class"},
    "pre": {"class"},
    "div": {"class"},
}


@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # html=True: cards often hold some HTML (centered images, <details>); the sanitiser, not the parser, decides
    # what of it survives.
    parser = MarkdownIt("commonmark", {"html": True, "highlight": _highlight_fence})
    parser.enable(["table", "strikethrough"])
    return parser


def _highlight_fence(code: str, language: str, _attrs: Any) -> str:
    """Code blocks of a card, highlighted by pygments in the page's `.highlight` style ("" leaves the block to
    markdown-it, which escapes it)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language.strip().split()[0]) if language.strip() else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""
    return f'<pre class="highlight"><code>{highlight(code, lexer, HtmlFormatter(nowrap=True))}</code></pre>\n'


def card_body(text: str) -> str:
    """The markdown of a README without its YAML front matter."""
    match = FRONT_MATTER.match(text)
    return text[match.end() :] if match else text


def render_markdown(text: str, rewrite: Callable[[str, str, str], str | None] | None = None) -> str:
    """Markdown -> sanitised HTML. `rewrite(tag, attribute, value)` may point relative `src`/`href` values elsewhere
    (it runs after the sanitiser's scheme check, so it only ever sees allowed values)."""
    import nh3

    raw = _markdown().render(text)

    def attribute_filter(tag: str, attribute: str, value: str) -> str | None:
        if rewrite is not None and attribute in ("src", "href"):
            return rewrite(tag, attribute, value)
        return value

    return nh3.clean(
        raw,
        tags=nh3.ALLOWED_TAGS | _CARD_TAGS,
        attributes={**nh3.ALLOWED_ATTRIBUTES, **_CARD_ATTRIBUTES},
        attribute_filter=attribute_filter,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def _render_card(registry: Registry, urls: Urls, repo: Repo, commit: Commit, revision: str, tree: Tree) -> RenderedCard:
    cache = _cache(registry).cards
    key = (commit.id, revision, urls.prefix)
    cached = cache.get(key)
    if cached is not None:
        return cached
    entry = tree.files.get("README.md")
    if entry is None:
        rendered = RenderedCard("", frozenset())
    else:
        text = (_read_head(registry, entry, MAX_CARD_BYTES) or b"").decode("utf-8", errors="replace")
        embedded: set[str] = set()

        def rewrite(tag: str, attribute: str, value: str) -> str | None:
            hub_repo = _HUB_REPO_LINK.match(value) if tag == "a" else None
            if hub_repo and _model_exists(registry, hub_repo.group(1)):
                return urls.repo(hub_repo.group(1))  # cards link their base models on huggingface.co
            if not value or value.startswith(("#", "/", "?")) or _SCHEME.match(value):
                return value
            target, _, fragment = value.partition("#")
            target = target.split("?", 1)[0]
            path = posixpath.normpath(unquote(target))
            if path in (".", "") or path.startswith("../") or path == "..":
                return None  # outside the repo: nothing to point at
            if tag in ("img", "audio", "source"):
                embedded.add(path)
                return urls.resolve(repo.repo_id, revision, path)
            url = urls.tree(repo.repo_id, revision, path) if tree.is_folder(path) and path not in tree.files else None
            url = url or urls.blob(repo.repo_id, revision, path)
            return f"{url}#{fragment}" if fragment else url

        rendered = RenderedCard(render_markdown(card_body(text), rewrite), frozenset(embedded))
    cache.put(key, rendered)
    return rendered


def _read_head(registry: Registry, entry: Entry, limit: int) -> bytes | None:
    """The first `limit` bytes of a file: from its blob, or rebuilt from Xet storage for a file uploaded through
    Xet (only the chunks that hold those bytes are read); None when the bytes are not here."""
    path = registry.store.blobs.path(entry.sha256)
    if path.exists():
        with open(path, "rb") as stream:
            return stream.read(limit)
    cas = getattr(registry, "cas", None)
    item = cas.file(entry.xet_hash) if cas is not None and getattr(entry, "xet_hash", None) else None
    if item is None:
        return None
    return b"".join(cas.iter_bytes(item, 0, min(limit, entry.size)))


@dataclass(frozen=True)
class RepoSummary:
    files: int
    size: int
    images: tuple[str, ...]
    audio: tuple[str, ...]


def _summary(registry: Registry, commit: Commit, tree: Tree) -> RepoSummary:
    cache = _cache(registry).summaries
    cached = cache.get(commit.id)
    if cached is None:
        paths = tree.paths
        cached = RepoSummary(
            files=len(paths),
            size=sum(entry.size for entry in tree.files.values()),
            images=tuple(path for path in paths if path.lower().endswith(IMAGE_SUFFIXES))[: MEDIA_SHOWN * 2],
            audio=tuple(path for path in paths if path.lower().endswith(AUDIO_SUFFIXES))[: MEDIA_SHOWN * 2],
        )
        cache.put(commit.id, cached)
    return cached


# --- who is asking ------------------------------------------------------------------------------------------------


@dataclass
class Visitor:
    principal: Principal
    stale_cookie: bool  # the cookie's token is no longer valid: the answer removes it

    @property
    def signed_in(self) -> bool:
        return not self.principal.anonymous

    def may_see(self, repo: Repo) -> bool:
        return not repo.private or (self.signed_in and self.principal.may_use(repo.namespace, "read"))


def _api() -> Any:
    from hf_tts.registry import app

    return app


def _visitor(registry: Registry, request: Request) -> Visitor:
    token = request.cookies.get(SESSION_COOKIE) or _api()._bearer(request)
    try:
        return Visitor(registry.auth.authenticate(token), False)
    except RegistryError as error:
        if error.status != 401:
            raise
        return Visitor(registry.auth.authenticate(None), bool(request.cookies.get(SESSION_COOKIE)))


def _open_revision(registry: Registry, visitor: Visitor, repo_id: str, revision: str) -> tuple[Repo, Commit]:
    """The repo (if the visitor may read it) and the revision's commit, in one read connection."""
    with registry.store.read() as conn:
        registry.auth.check_any_read(visitor.principal)
        repo, target = registry.store.get_repo_at("model", repo_id, revision, conn)
        registry.auth.check_read(visitor.principal, repo)
        return repo, registry.store.resolve(repo, revision, conn, target)


def _model_exists(registry: Registry, repo_id: str) -> bool:
    """Whether a model repo of that name is here (a card that names it already shows the name; whether the visitor
    may open it is decided when they follow the link)."""
    try:
        registry.store.get_repo("model", validate_repo_id(repo_id))
    except RegistryError:
        return False
    return True


def _visible_model(registry: Registry, visitor: Visitor, repo_id: str) -> bool:
    try:
        return visitor.may_see(registry.store.get_repo("model", validate_repo_id(repo_id)))
    except RegistryError:
        return False


# --- page plumbing ------------------------------------------------------------------------------------------------


@dataclass
class Page:
    request: Request
    registry: Registry
    visitor: Visitor
    urls: Urls

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = (
            _templates()
            .get_template(template)
            .render(
                urls=self.urls,
                visitor=self.visitor,
                open_registry=not self.registry.auth.tokens_configured(),
                here=_here(self.request),
                public_url=self.registry.settings.public_url,
                **context,
            )
        )
        response = HTMLResponse(body, status_code=status_code)
        # Pages differ per visitor (private repos): never stored by shared caches, always revalidated.
        response.headers["Cache-Control"] = "private, no-cache"
        response.headers["Vary"] = "Cookie, Authorization"
        if self.visitor.stale_cookie:
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _here(request: Request) -> str:
    """This page's path and query (where signing in comes back to)."""
    path = request.scope.get("raw_path", b"/").decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def _page(handler: Callable[[Page], Response]) -> Callable[[Request], Awaitable[Response]]:
    """A page endpoint: the work in a worker thread, client errors as an HTML page with the same status."""

    async def endpoint(request: Request) -> Response:
        namespace = request.path_params.get("namespace")
        if namespace is not None and unquote(namespace).lower() in RESERVED_NAMESPACES:
            raise HTTPException(404)  # /api/..., /datasets/...: answered as before, as an unknown API route

        def work() -> Response:
            registry = request.app.state.registry
            urls = Urls(registry.settings.public_url)
            page = Page(request, registry, Visitor(registry.auth.authenticate(None), False), urls)
            try:
                page.visitor = _visitor(registry, request)
                return handler(page)
            except RegistryError as error:
                return page.render("error.html", error.status, status=error.status, message=error.message)

        return await run_in_threadpool(work)

    return endpoint


def _int_param(request: Request, name: str) -> int:
    value = request.query_params.get(name, "0")
    if not value.isdigit() or len(value) > 9:
        raise RegistryError(400, f"query parameter {name!r} must be a page number (0, 1, ...), got {value!r}")
    return int(value)


def _repo_id(page: Page) -> str:
    params = page.request.path_params
    return validate_repo_id(f"{unquote(params['namespace'])}/{unquote(params['name'])}")


def _path_param(page: Page) -> str:
    path = unquote(page.request.path_params.get("path", "")).strip("/")
    return validate_repo_path(path) if path else ""


def _repo_context(
    page: Page, repo: Repo, commit: Commit, revision: str, tab: str, rev_url: Callable[[str], str]
) -> dict[str, Any]:
    """What every repo page shows above its content: the name, the tabs and the revision selector (`rev_url`: this
    page at another branch or tag)."""
    refs = page.registry.store.refs(repo)
    return {
        "repo": repo,
        "commit": commit,
        "revision": revision,
        "tab": tab,
        "rev_url": rev_url,
        "branches": [name for name, _ in refs.branches],
        "tags": [name for name, _ in refs.tags],
    }


# --- listings -------------------------------------------------------------------------------------------------------

_SORTS: dict[str, tuple[str, Callable[[Repo], Any], bool]] = {
    "updated": ("Recently updated", lambda repo: repo.last_modified, True),
    "created": ("Recently created", lambda repo: repo.created_at, True),
    "name": ("Name", lambda repo: repo.repo_id.lower(), False),
}
_FACETS = ("pipeline_tag", "library", "tag", "author")


def _facet_values(repo: Repo, facet: str) -> list[str]:
    if facet == "tag":
        return card_tags(repo.card)
    value = repo.namespace if facet == "author" else repo.card.get("library_name" if facet == "library" else facet)
    return [value] if isinstance(value, str) and value else []


def _listing(page: Page, namespace: str | None) -> Response:
    """`/models` and `/{namespace}`: search by name, filter by task, library, tag and author, sort, pages. Facet
    counts come from the visible repos only, so a private repo never shows up even as a count."""
    params = page.request.query_params
    query = {key: params.get(key, "").strip()[:200] for key in ("search", *_FACETS)}
    if namespace is not None:
        query["author"] = namespace
    sort = params.get("sort", "updated")
    if sort not in _SORTS:
        raise RegistryError(400, f"sort must be one of {', '.join(_SORTS)}, got {sort!r}")
    number = _int_param(page.request, "p")
    page.registry.auth.check_any_read(page.visitor.principal)
    found = [
        repo
        for repo in page.registry.store.list_repos(
            "model", namespace=query["author"] or None, search=query["search"] or None
        )
        if page.visitor.may_see(repo)
    ]
    counts: dict[str, dict[str, int]] = {facet: {} for facet in _FACETS}
    for repo in found:
        for facet in _FACETS:
            for value in _facet_values(repo, facet):
                counts[facet][value] = counts[facet].get(value, 0) + 1
    repos = [repo for repo in found if all(not query[f] or query[f] in _facet_values(repo, f) for f in _FACETS)]
    _, key, reverse = _SORTS[sort]
    repos.sort(key=key, reverse=reverse)

    def link(**changes: Any) -> str:
        merged = {**query, "sort": "" if sort == "updated" else sort, **changes}
        if namespace is None:
            return page.urls.models(**merged)
        merged.pop("author")
        encoded = urlencode({key: value for key, value in merged.items() if value not in (None, "", 0)})
        return page.urls.namespace(namespace) + (f"?{encoded}" if encoded else "")

    facets = {
        facet: [
            (value, count, link(**{facet: "" if query[facet] == value else value}), query[facet] == value)
            for value, count in sorted(values.items(), key=lambda item: (-item[1], item[0]))[:20]
        ]
        for facet, values in counts.items()
        if not (facet == "author" and namespace is not None)
    }
    return page.render(
        "models.html",
        namespace=namespace,
        repos=repos[number * LIST_PAGE : (number + 1) * LIST_PAGE],
        total=len(repos),
        facets=facets,
        query=query,
        sort=sort,
        sorts=[(name, label) for name, (label, _, _) in _SORTS.items()],
        page_number=number,
        has_next=(number + 1) * LIST_PAGE < len(repos),
        page_url=lambda number: link(p=number),
    )


@_page
def models_page(page: Page) -> Response:
    return _listing(page, None)


@_page
def namespace_page(page: Page) -> Response:
    return _listing(page, unquote(page.request.path_params["namespace"]))


# --- a repo -----------------------------------------------------------------------------------------------------------


def _base_models(page: Page, card: dict) -> list[tuple[str, bool]]:
    """(repo id, linkable): linkable when the base model is in this registry and the visitor may see it."""
    names = card_strings(card.get("base_model"))
    return [(name, _visible_model(page.registry, page.visitor, name)) for name in names[:20]]


@_page
def repo_page(page: Page) -> Response:
    repo_id = _repo_id(page)
    revision = page.request.query_params.get("revision", "main")
    repo, commit = _open_revision(page.registry, page.visitor, repo_id, revision)
    tree = page.registry.store.tree(commit)
    card = page.registry.card(commit)
    rendered = _render_card(page.registry, page.urls, repo, commit, revision, tree)
    summary = _summary(page.registry, commit, tree)
    shown_elsewhere = {*card_strings(card.get("library_name")), *card_strings(card.get("pipeline_tag"))}
    return page.render(
        "repo.html",
        **_repo_context(page, repo, commit, revision, "card", lambda rev: page.urls.repo(repo.repo_id, rev)),
        card_html=rendered.html,
        has_card="README.md" in tree.files,
        meta={
            "pipeline_tag": card_strings(card.get("pipeline_tag")),
            "library": card_strings(card.get("library_name")),
            "license": card_strings(card.get("license")),
            "language": card_strings(card.get("language")),
            "datasets": card_strings(card.get("datasets")),
            "tags": [tag for tag in card_strings(card.get("tags")) if tag not in shown_elsewhere],
            "relation": card_strings(card.get("base_model_relation")),
        },
        base_models=_base_models(page, card),
        summary=summary,
        images=[path for path in summary.images if path not in rendered.embedded][:MEDIA_SHOWN],
        audio=[path for path in summary.audio if path not in rendered.embedded][:MEDIA_SHOWN],
    )


def _storage_marker(entry: Entry) -> str:
    """Where a file's bytes live, as the Hub marks it: Xet or LFS for large files, nothing for regular ones."""
    if getattr(entry, "xet_hash", None):
        return "Xet"
    return "LFS" if getattr(entry, "lfs", False) else ""


def _folder_entries(tree: Tree, folder: str) -> list[tuple[str, int | None]]:
    """The entries of one folder, sub-folders first: (path, latest commit id under it) for a folder, (path, None) for
    a file. One pass over the folder's paths; rows are built only for the page shown."""
    base = f"{folder}/" if folder else ""
    folders: dict[str, int] = {}
    files: list[tuple[str, int | None]] = []
    for path in tree.under(folder):
        head, slash, _ = path[len(base) :].partition("/")
        if slash:
            changed = tree.files[path].changed_in
            if changed > folders.get(base + head, -1):
                folders[base + head] = changed
        else:
            files.append((path, None))
    return [*folders.items(), *files]


def _row(page: Page, tree: Tree, folder: str, path: str, latest: int | None) -> dict[str, Any]:
    name = path[len(folder) + 1 :] if folder else path
    store = page.registry.store
    if latest is not None:
        return {"path": path, "name": name, "folder": True, "commit": store.commit_by_id(latest)}
    entry = tree.files[path]
    commit = store.commit_by_id(entry.changed_in)
    return {
        "path": path,
        "name": name,
        "folder": False,
        "entry": entry,
        "marker": _storage_marker(entry),
        "commit": commit,
    }


@_page
def tree_page(page: Page) -> Response:
    repo_id = _repo_id(page)
    revision = unquote(page.request.path_params["rev"])
    folder = _path_param(page)
    number = _int_param(page.request, "p")
    repo, commit = _open_revision(page.registry, page.visitor, repo_id, revision)
    tree = page.registry.store.tree(commit)
    if folder and folder in tree.files:
        return RedirectResponse(page.urls.blob(repo.repo_id, revision, folder), status_code=302)
    if folder and not tree.is_folder(folder):
        raise RegistryError(404, f"folder {folder!r} not found at {revision}")
    rows = _folder_entries(tree, folder)
    shown = rows[number * TREE_PAGE : (number + 1) * TREE_PAGE]
    return page.render(
        "tree.html",
        **_repo_context(page, repo, commit, revision, "files", lambda rev: page.urls.tree(repo.repo_id, rev, folder)),
        folder=folder,
        crumbs=_crumbs(folder),
        rows=[_row(page, tree, folder, path, latest) for path, latest in shown],
        total=len(rows),
        page_number=number,
        has_next=(number + 1) * TREE_PAGE < len(rows),
        page_url=lambda number: page.urls.tree(repo.repo_id, revision, folder, number),
    )


def _crumbs(path: str) -> list[tuple[str, str]]:
    parts = path.split("/") if path else []
    return [(part, "/".join(parts[: index + 1])) for index, part in enumerate(parts)]


@dataclass(frozen=True)
class SafetensorsView:
    tensors: tuple[tuple[str, str, tuple[int, ...], int], ...]  # name, dtype, shape, parameters
    parameters: int
    by_dtype: tuple[tuple[str, int], ...]
    metadata: tuple[tuple[str, str], ...]


def _safetensors_view(registry: Registry, entry: Entry) -> SafetensorsView | str:
    """The tensors of a safetensors file from its header alone (8 bytes of length, then JSON): a multi-GB file
    costs a read of its first bytes. A string says why the header cannot be shown."""
    cache = _cache(registry).headers
    cached = cache.get(entry.sha256)
    if cached is None:
        cached = _parse_safetensors_header(registry, entry)
        cache.put(entry.sha256, cached)
    return cached


def _parse_safetensors_header(registry: Registry, entry: Entry) -> SafetensorsView | str:
    """Read through the registry (blob or Xet), checked by the package's strict header parser."""
    prefix = _read_head(registry, entry, 8)
    if prefix is None:
        return "this file's bytes are not stored in this registry"
    try:
        header_size = safetensors_header_length(prefix, entry.size, "this file")
        raw = (_read_head(registry, entry, 8 + header_size) or b"")[8:]
        header = parse_safetensors_header(raw, entry.size, "this file")
    except InputError as error:
        return str(error)
    tensors = []
    by_dtype: dict[str, int] = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        count = math.prod(info["shape"])
        tensors.append((name, info["dtype"], tuple(info["shape"]), count))
        by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + count
    metadata = header.get("__metadata__", {})
    return SafetensorsView(
        tuple(tensors),
        sum(by_dtype.values()),
        tuple(sorted(by_dtype.items())),
        tuple(sorted(metadata.items())),
    )


def _text_view(registry: Registry, entry: Entry, path: str) -> tuple[str, str] | None:
    """("highlighted", html) or ("plain", text) of a text file; None for binary or oversized files."""
    if entry.size > TEXT_BYTES:
        return None
    cache = _cache(registry).texts
    key = (entry.sha256, path.rsplit("/", 1)[-1])
    cached = cache.get(key)
    if cached is not None:
        return cached or None
    data = _read_head(registry, entry, TEXT_BYTES)
    result: tuple[str, str] | None
    try:
        text = data.decode("utf-8") if data is not None else None
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text[:8192]:
        result = None
    elif entry.size > HIGHLIGHT_BYTES:
        result = ("plain", text)
    else:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import TextLexer, guess_lexer_for_filename
        from pygments.util import ClassNotFound

        try:
            lexer = guess_lexer_for_filename(path.rsplit("/", 1)[-1], text[:4096])
        except ClassNotFound:
            lexer = TextLexer()
        result = ("highlighted", highlight(text, lexer, HtmlFormatter(cssclass="highlight", linenos="table")))
    cache.put(key, result or False)
    return result


@_page
def blob_page(page: Page) -> Response:
    repo_id = _repo_id(page)
    revision = unquote(page.request.path_params["rev"])
    path = _path_param(page)
    if not path:
        raise RegistryError(404, "a file path is needed after the revision")
    repo, commit = _open_revision(page.registry, page.visitor, repo_id, revision)
    entry = page.registry.store.entry(commit, path)
    if entry is None:
        if page.registry.store.tree(commit).is_folder(path):
            return RedirectResponse(page.urls.tree(repo.repo_id, revision, path), status_code=302)
        raise RegistryError(404, f"{path} not found at {revision}")
    lower = path.lower()
    view: dict[str, Any] = {"kind": "binary"}
    if lower.endswith(".safetensors"):
        header = _safetensors_view(page.registry, entry)
        view = {"kind": "safetensors", "header": header, "rows_shown": TENSOR_ROWS_SHOWN}
    elif lower.endswith(IMAGE_SUFFIXES):
        view = {"kind": "image"}
    elif lower.endswith(AUDIO_SUFFIXES):
        view = {"kind": "audio"}
    elif lower.endswith(".md") and page.request.query_params.get("plain") != "1":
        tree = page.registry.store.tree(commit)
        if path == "README.md":
            view = {
                "kind": "markdown",
                "html": _render_card(page.registry, page.urls, repo, commit, revision, tree).html,
            }
    if view["kind"] == "binary":
        text = _text_view(page.registry, entry, path)
        if text is not None:
            view = {"kind": text[0], "content": text[1]}
    return page.render(
        "blob.html",
        **_repo_context(page, repo, commit, revision, "files", lambda rev: page.urls.blob(repo.repo_id, rev, path)),
        path=path,
        crumbs=_crumbs(path),
        entry=entry,
        marker=_storage_marker(entry),
        last_commit=page.registry.store.commit_by_id(entry.changed_in),
        view=view,
    )


@_page
def commits_page(page: Page) -> Response:
    repo_id = _repo_id(page)
    revision = unquote(page.request.path_params["rev"])
    number = _int_param(page.request, "p")
    repo, commit = _open_revision(page.registry, page.visitor, repo_id, revision)
    history = page.registry.store.history(repo, commit)
    return page.render(
        "commits.html",
        **_repo_context(page, repo, commit, revision, "commits", lambda rev: page.urls.commits(repo.repo_id, rev)),
        commits=history[number * COMMITS_PAGE : (number + 1) * COMMITS_PAGE],
        total=len(history),
        page_number=number,
        has_next=(number + 1) * COMMITS_PAGE < len(history),
        page_url=lambda number: page.urls.commits(repo.repo_id, revision, number),
    )


def _changes(registry: Registry, commit: Commit) -> list[dict[str, Any]]:
    """What a commit changed: paths added, modified or deleted against its parent."""
    store = registry.store
    after = store.tree(commit).files
    before = store.tree(store.commit_by_id(commit.parent_id)).files if commit.parent_id else {}
    changes = []
    for path in sorted(set(after) | set(before)):
        old, new = before.get(path), after.get(path)
        if old is not None and new is not None and old.sha256 == new.sha256:
            continue
        status = "added" if old is None else "deleted" if new is None else "modified"
        changes.append({"path": path, "status": status, "entry": new or old})
    return changes


@_page
def commit_html(page: Page) -> Response:
    repo_id = _repo_id(page)
    oid = unquote(page.request.path_params["oid"])
    repo, commit = _open_revision(page.registry, page.visitor, repo_id, oid)
    parent = page.registry.store.commit_by_id(commit.parent_id) if commit.parent_id else None
    changes = _changes(page.registry, commit)
    return page.render(
        "commit.html",
        **_repo_context(page, repo, commit, commit.oid, "commits", lambda rev: page.urls.commits(repo.repo_id, rev)),
        parent=parent,
        changes=changes[:CHANGED_FILES_SHOWN],
        total=len(changes),
    )


async def commit_view(request: Request) -> Response:
    """`/{repo}/commit/{sha}`: a page for browsers; the JSON the API has always answered (the `commitUrl` of every
    commit) for everyone else."""
    if "text/html" in request.headers.get("accept", ""):
        return await commit_html(request)
    return await _api().commit_page(request)


# --- signing in -------------------------------------------------------------------------------------------------------


def _safe_next(value: str, urls: Urls) -> str:
    """Only a path on this site (never `//host` or a scheme): signing in must not become an open redirect."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value and value.isprintable():
        return value
    return urls.home()


def _check_same_origin(request: Request, registry: Registry) -> None:
    """Sign-in and sign-out forms only from this registry's own pages (no cross-site login/logout)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    public = urlsplit(registry.settings.public_url)
    allowed = {f"{public.scheme}://{public.netloc}", f"{request.url.scheme}://{request.headers.get('host', '')}"}
    if origin not in allowed:
        raise RegistryError(403, f"sign-in forms are accepted only from this registry's pages, not from {origin}")


async def login(request: Request) -> Response:
    registry = request.app.state.registry
    form: dict[str, list[str]] = {}
    if request.method == "POST":
        raw = await _api()._read_body(request, 16 << 10)
        form = parse_qs(raw.decode("utf-8", "replace"))

    @_page
    def handle(page: Page) -> Response:
        next_url = _safe_next((form.get("next") or [page.request.query_params.get("next", "")])[0], page.urls)
        if page.request.method != "POST":
            return page.render("login.html", next_url=next_url, error=None)
        _check_same_origin(page.request, registry)
        token = (form.get("token") or [""])[0].strip()
        if not registry.auth.tokens_configured():
            error = "this registry is open: it has no tokens and no private repos, so there is nothing to sign in to"
            return page.render("login.html", 400, next_url=next_url, error=error)
        if not token:
            return page.render("login.html", 400, next_url=next_url, error="enter an access token (hf_...)")
        try:
            registry.auth.authenticate(token)
        except RegistryError as error:
            if error.status != 401:
                raise
            message = "that token is not valid here (mistyped, revoked, or from another registry)"
            return page.render("login.html", 401, next_url=next_url, error=message)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="lax",
            secure=registry.settings.public_url.startswith("https://"),
        )
        return response

    return await handle(request)


async def logout(request: Request) -> Response:
    registry = request.app.state.registry
    _check_same_origin(request, registry)
    response = RedirectResponse(Urls(registry.settings.public_url).home(), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def static(request: Request) -> Response:
    found = _static_files().get(request.path_params["name"])
    if found is None:
        raise HTTPException(404)
    body, media_type, _ = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


# Mounted by `app.ROUTES` after every API route that could match the same paths, so no page shadows the API
# (and a page's reserved-namespace check keeps unknown `/api/x` paths answering 404 as before).
_REPO = "/{namespace}/{name}"
ROUTES = [
    Route("/", models_page, methods=["GET"]),
    Route("/models", models_page, methods=["GET"]),
    Route("/-/static/{name}", static, methods=["GET"]),
    Route("/-/login", login, methods=["GET", "POST"]),
    Route("/-/logout", logout, methods=["POST"]),
    Route("/{namespace}", namespace_page, methods=["GET"]),
    Route(_REPO, repo_page, methods=["GET"]),
    Route(_REPO + "/tree/{rev}", tree_page, methods=["GET"]),
    Route(_REPO + "/tree/{rev}/{path:path}", tree_page, methods=["GET"]),
    Route(_REPO + "/blob/{rev}/{path:path}", blob_page, methods=["GET"]),
    Route(_REPO + "/commits/{rev}", commits_page, methods=["GET"]),
    Route(_REPO + "/commit/{oid}", commit_view, methods=["GET"]),
]

__all__ = ["ROUTES", "SecurityHeaders", "card_body", "render_markdown"]
