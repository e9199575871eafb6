"""Limits on what camcli reads, as constants of their own (importing this imports nothing).

``camcli --help`` builds its option table from these, so they must not pull in Pillow, numpy or
fsspec, which :mod:`camcli.images` does.
"""

#: Images declaring more pixels are refused (decompression bombs): Pillow's own default limit,
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (1024 * 1024 * 1024 // 4 // 3); ``tests/test_images.py``
#: checks that the two agree.
DEFAULT_MAX_PIXELS = 89_478_485
#: Pillow refuses images over twice its limit whatever ``--max-pixels`` says.
PILLOW_HARD_MAX_PIXELS = 2 * DEFAULT_MAX_PIXELS

#: Bytes read per input, for each pixel ``--max-pixels`` allows: an uncompressed 8-bit RGBA
#: image at the pixel limit fits, with :data:`READ_MARGIN_BYTES` of headers and metadata.
READ_BYTES_PER_PIXEL = 4
READ_MARGIN_BYTES = 16 << 20


def check_max_bytes(max_bytes: int | None) -> None:
    """A UsageError unless ``max_bytes`` (``--max-input-bytes``) is None or at least 1."""
    if max_bytes is not None and max_bytes < 1:
        from camcli.errors import UsageError

        raise UsageError(f"--max-input-bytes must be at least 1, not {max_bytes}")


def read_limit(max_pixels: int | None, max_bytes: int | None = None) -> int:
    """The most bytes read from one input: ``max_bytes`` (``--max-input-bytes``) when given,
    else derived from ``max_pixels`` (no pixel limit: Pillow's own hard limit)."""
    if max_bytes:
        return max_bytes
    return (max_pixels or PILLOW_HARD_MAX_PIXELS) * READ_BYTES_PER_PIXEL + READ_MARGIN_BYTES


def too_large(limit: int) -> str:
    """Why an input larger than the read limit was not read (the one wording)."""
    return f"larger than the read limit of {limit:,} bytes (--max-input-bytes)"


#: The read limit of a run with the default ``--max-pixels`` (about 375 MB).
DEFAULT_READ_LIMIT = read_limit(DEFAULT_MAX_PIXELS)
