"""Limits on what camcli reads, as constants of their own (importing this imports nothing).

``camcli --help`` builds its option table from these, so they must not pull in Pillow, numpy or
fsspec, which :mod:`camcli.images` does.
"""

#: Images declaring more pixels are refused (decompression bombs): Pillow's own default limit,
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (1024 * 1024 * 1024 // 4 // 3); ``tests/test_images.py``
#: checks that the two agree.
DEFAULT_MAX_PIXELS = 89_478_485
