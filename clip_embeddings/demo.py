"""``python -m clip_embeddings.demo`` (``make demo``): kept so the documented command still runs.

The demo lives in :mod:`clip_embeddings.apps.demo`; this module only forwards to it.
"""

from .apps.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
