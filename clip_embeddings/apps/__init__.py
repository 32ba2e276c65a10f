"""Applications on top of the library: the command line (:mod:`.cli`, one module per command),
the HTTP server (:mod:`.server`), the demo (:mod:`.demo`), console helpers shared by the CLI and
the demo (:mod:`.console`), and Ray (:mod:`.distributed`). Nothing in the library imports these.
"""
