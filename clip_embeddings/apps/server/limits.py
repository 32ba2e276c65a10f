"""What one request may cost the server: :class:`ServeLimits`, with the budget's numbers."""

from __future__ import annotations

from dataclasses import dataclass

from ...inputs.options import LoaderOptions

#: The names a loopback server answers to by default (``serve`` adds the address it binds).
LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts(bound: str) -> tuple[str, ...]:
    """The ``Host`` names a server bound to ``bound`` answers to unless told otherwise.

    Loopback names plus the bound address; a server bound to every interface (``0.0.0.0``,
    ``::``) is meant to be reached under names it cannot know, so it answers to any (pass
    ``--allowed-hosts`` to narrow it).

    Example:
        >>> default_allowed_hosts("127.0.0.1"), default_allowed_hosts("0.0.0.0")
        (('localhost', '127.0.0.1', '::1'), ('*',))
        >>> default_allowed_hosts("192.168.1.20")
        ('localhost', '127.0.0.1', '::1', '192.168.1.20')
    """
    if bound in ("0.0.0.0", "::", ""):
        return ("*",)
    return LOOPBACK_NAMES + ((bound.strip("[]").lower(),) if bound.strip("[]").lower() not in LOOPBACK_NAMES else ())


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost the server; the defaults suit a LAN or a reverse proxy in front.

    Attributes:
        max_upload_bytes: the largest request body (413 beyond it), also each image's byte limit.
        max_pixels: the largest ``width * height`` of an image, checked before decoding (422).
        request_timeout: seconds a request may wait for its body and for the model (408 / 503).
        max_queue: most requests waiting for the model (429 beyond it).
        max_batch: most texts + images in one shared forward pass.
        max_wait_ms: how long the first request of a pass waits for others to join it.
        max_items: most texts, images or labels in one request (413 beyond it).
        max_templates: most prompt templates in one ``/classify`` request (413 beyond it).
        max_prompts: most labels x templates in one ``/classify`` request: the texts it encodes (413).
        max_prompt_chars: the longest label, and the longest label written into a template (413).
        max_urls: most image URLs in one request, each fetched for up to ``url_timeout`` (413).
        max_terms: most terms in one ``/query`` compound query (texts, images and item ids; 413).
        max_query_chars: the longest ``/query`` query string (413); each text term also stays
            within ``max_prompt_chars``.
        allowed_hosts: the ``Host`` names served (400 for others; ``"*"`` for any): DNS rebinding
            cannot reach a loopback server under a web page's own name.
        token: when set, every API route needs ``Authorization: Bearer <token>`` (401 otherwise).
        allow_private_urls: let image URLs reach loopback and private addresses (off: no SSRF).
        url_timeout: seconds to fetch one image URL.

    Example:
        >>> ServeLimits(max_queue=32).max_batch
        64
    """

    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 50_000_000
    request_timeout: float = 30.0
    max_queue: int = 256
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_items: int = 64
    max_templates: int = 32
    max_prompts: int = 512
    max_prompt_chars: int = 1_000
    max_urls: int = 16
    max_terms: int = 16
    max_query_chars: int = 4_000
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    token: str | None = None
    allow_private_urls: bool = False
    url_timeout: float = 10.0

    def loader_options(self) -> LoaderOptions:
        """The image loader's options for request images.

        Example:
            >>> ServeLimits(max_pixels=1000).loader_options().max_pixels
            1000
        """
        return LoaderOptions(max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes, url_timeout=self.url_timeout,
                             allow_private_addresses=self.allow_private_urls)
