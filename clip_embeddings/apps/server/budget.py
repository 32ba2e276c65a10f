"""The cost budget of one request, checked before any work is queued for the model.

The model thread is shared by every client, so what a request asks of it must be bounded by its
size on the wire, not by what its strings expand to. Each check refuses with a 413 (too much) or
a 400 (not a valid value) naming the field and the limit:

* ``/classify`` templates are real templates (text around one bare ``{}``; see
  :func:`~clip_embeddings.zeroshot.template_parts`), at most ``max_templates`` of them, at most
  ``max_prompts`` labels x templates, and no label or filled template over ``max_prompt_chars``.
* at most ``max_urls`` image URLs per request (each may take ``url_timeout`` to fetch).
* texts need no limit here: the tokenizer reads a text only as far as the model's 77-token
  context reaches (:meth:`~clip_embeddings.tokenizer.Tokenizer.encode`), so a 2 MB text costs
  what a 77-token one does.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...tasks.zeroshot import template_parts
from .inputs import BadRequest, ImageInput
from .limits import ServeLimits


def check_images(images: Sequence[ImageInput], limits: ServeLimits) -> None:
    """Refuse a request with more image URLs than ``max_urls`` (413).

    Example:
        >>> check_images([ImageInput("images[0]", url="http://example.com/a.jpg")], ServeLimits())
    """
    urls = sum(image.url is not None for image in images)
    if urls > limits.max_urls:
        raise BadRequest(f"images: {urls} URLs in one request, more than the limit of {limits.max_urls} "
                         "(upload the files instead)", 413)


def check_prompts(labels: Sequence[str], templates: Sequence[str], limits: ServeLimits) -> None:
    """Refuse ``/classify`` prompts that are not templates or cost more than the budget.

    Example:
        >>> check_prompts(["cat", "dog"], ["a photo of a {}."], ServeLimits())
        >>> try:
        ...     check_prompts(["cat", "dog"], ["{:>40000000}"], ServeLimits())
        ... except BadRequest as e:
        ...     print(e.status, e)
        400 templates[0]: template '{:>40000000}' has a format spec (':>40000000'); a template is text around exactly one '{}'
    """
    if len(templates) > limits.max_templates:
        raise BadRequest(f"templates: {len(templates)} in one request, more than the limit of {limits.max_templates}", 413)
    prompts = len(labels) * len(templates)
    if prompts > limits.max_prompts:
        raise BadRequest(f"labels x templates: {len(labels)} x {len(templates)} = {prompts} prompts to encode, more "
                         f"than the limit of {limits.max_prompts}", 413)
    chars = limits.max_prompt_chars
    for i, label in enumerate(labels):
        if len(label) > chars:
            raise BadRequest(f"labels[{i}]: {len(label):,} characters, more than the limit of {chars:,}", 413)
    longest = max(range(len(labels)), key=lambda i: len(labels[i]), default=None)
    for j, template in enumerate(templates):
        if len(template) > chars + 2:  # its "{}" is replaced, so a template may be two characters longer
            raise BadRequest(f"templates[{j}]: {len(template):,} characters, more than the limit of {chars + 2:,}", 413)
        try:
            prefix, suffix = template_parts(template)
        except ValueError as e:
            raise BadRequest(f"templates[{j}]: {e}") from None
        if longest is not None and len(prefix) + len(labels[longest]) + len(suffix) > chars:
            raise BadRequest(f"templates[{j}] filled with labels[{longest}] is "
                             f"{len(prefix) + len(labels[longest]) + len(suffix):,} characters, more than the "
                             f"limit of {chars:,}", 413)

