"""``python -m clip_embeddings.apps.cli``: the ``clip-embeddings`` command."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
