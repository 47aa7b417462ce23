"""A preprocessor that kills its worker process on one kind of image, as a decoder segfault
would (importable by worker processes, which is why it is not inside a test function)."""

from __future__ import annotations

import os


class DiesOnPureRed:
    preload_modules = ("tests.crashy",)

    def __init__(self, inner):
        self.inner = inner
        self.preload_modules = ("tests.crashy", *getattr(inner, "preload_modules", ()))

    def __call__(self, image):
        if image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((image.width - 1, image.height - 1)) == (255, 0, 0):
            os._exit(3)
        return self.inner(image)
