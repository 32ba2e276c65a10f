"""``python -m clip_embeddings.apps.cli``: the ``clip-embeddings`` command."""

from . import main

raise SystemExit(main())
