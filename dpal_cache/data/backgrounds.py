"""The optional crowd background folder, decoded like the images (the store's DecodeConfig).

    backgrounds = Backgrounds(FolderSource("data/backgrounds"), decode)
    rgb = backgrounds.load(3)          # (H, W, 3) uint8
    backgrounds.sizes                  # (N, 2) (H, W): drawing crowd recipes needs them
"""

from __future__ import annotations

import functools

import numpy as np

from dpal_cache.data.decode import DecodeConfig, decode_rgb
from dpal_cache.data.sources import ImageSource


class Backgrounds:
    """Person-free scenes that copy-paste crowds are pasted onto.

    ``sizes`` (drawing recipes needs them) decodes every background once, on first use; replaying
    stored recipes only loads the backgrounds it uses.
    """

    def __init__(self, source: ImageSource, decode: DecodeConfig = DecodeConfig()):
        self.source = source
        self.decode = decode

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        return np.asarray([self.load(i).shape[:2] for i in range(len(self.source))], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> np.ndarray:
        return decode_rgb(self.source.read(index), self.decode)
