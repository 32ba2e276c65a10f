"""Getting images in: loader options, sources, HTTP, decoding, folders, captions."""
