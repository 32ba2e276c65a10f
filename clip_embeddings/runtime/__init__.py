"""Running the core fast on this machine: inference rewrites (:mod:`.inference`), the ``auto``
probe and decision per CPU (:mod:`.auto`), the ONNX Runtime image tower (:mod:`.onnx_backend`), and the
one thread that runs the shared models (:mod:`.compute`).
"""
