"""A source joined with its manifest: decoded images that are checked against their scan.

Extraction and training both read images through this, so a file that changed since the
scan (its content hash differs) is caught the same way in both stages. Per-image columns
are kept as numpy arrays (not Python lists) so forked data workers do not copy them.

    cat = Catalog(open_source("imgs/"), read_manifest("manifest.parquet"))
    rgb = cat.load(17)                 # (H, W, 3) uint8, or raises ImageUnavailable
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from dpal_cache.data.decode import DecodeConfig, ImageDecodeError, decode_rgb
from dpal_cache.data.manifest import _utf8, content_hash, ok_indices
from dpal_cache.data.sources import FolderSource, ImageSource, SourceError, SourceReadError

log = logging.getLogger(__name__)


class ImageUnavailable(Exception):
    """Image ``index`` cannot be used now: ``reason`` is a read/decode reason, ``changed`` or ``failed_scan``."""

    def __init__(self, index: int, reason: str, detail: str = ""):
        self.index = index
        self.reason = reason
        self.detail = detail
        super().__init__(f"image {index}: {reason}{': ' + detail if detail else ''}")


def source_as_scanned(source: ImageSource, manifest: pa.Table) -> ImageSource:
    """``source`` holding exactly the manifest's images, in its order.

    A folder is listed again by each stage, so a file deleted or added since the scan would shift
    every later index. Here a deleted file keeps its index (and reads as ``missing``) and a new file
    is left out (re-run scan to include it). Lists and LMDBs name their images themselves.

    Raises:
        SourceError: none of the scanned files is in the folder (another folder than the one scanned).
    """
    keys = manifest.column("key").to_pylist()
    if not isinstance(source, FolderSource):
        return source
    current = {_utf8(key): key for key in (source.key(i) for i in range(len(source)))}
    if list(current) == keys:
        return source
    gone = sum(k not in current for k in keys)
    if keys and gone == len(keys):
        raise SourceError(f"none of the {len(keys)} scanned images is in {source.root}: pass the folder that was "
                          "scanned, or scan this one")
    new = len(current) - (len(keys) - gone)
    if gone or new:
        parts = ([f"{gone} scanned file(s) are gone (they are recorded as missing)"] if gone else []) + (
            [f"{new} new file(s) are left out (re-run scan to include them)"] if new else [])
        log.warning("%s changed since the scan: %s", source.root, "; ".join(parts))
    else:  # the same files, scanned in another order (e.g. from an LMDB of them): read them in the scan's
        log.info("%s holds the scanned images in another order; reading them in the scan's order", source.root)
    return FolderSource.with_keys(source.root, [current.get(k, k) for k in keys], source.extensions)


class Catalog:
    """Random access to decoded images of ``source``, validated against ``manifest``."""

    def __init__(self, source: ImageSource, manifest: pa.Table, decode: DecodeConfig = DecodeConfig(),
                 check_hash: bool = True):
        source = source_as_scanned(source, manifest)  # a file deleted since the scan keeps its index
        if manifest.num_rows != len(source):
            raise ValueError(
                f"manifest has {manifest.num_rows} rows but the source has {len(source)} images: "
                "re-run `dpal-cache scan` on this source"
            )
        index = manifest.column("index").to_numpy()
        if not np.array_equal(index, np.arange(len(source))):
            raise ValueError("manifest rows must be the source's images in index order (re-run `dpal-cache scan`)")
        self.source = source
        self.decode = decode
        self.check_hash = check_hash
        self.ok = ok_indices(manifest)  # sorted int64
        self.ok_mask = np.zeros(len(source), dtype=bool)
        self.ok_mask[self.ok] = True
        height = manifest.column("height").fill_null(0).to_numpy()
        width = manifest.column("width").fill_null(0).to_numpy()
        self.sizes = np.stack([height, width], axis=1).astype(np.int64)  # (N, 2): decoded (H, W)
        hashes = manifest.column("hash").fill_null("").to_pylist()
        self.hashes = np.asarray(hashes, dtype="S32")  # 128-bit hex digests

    def __len__(self) -> int:
        return len(self.source)

    def check_available(self, index: int) -> None:
        """ImageUnavailable when image ``index`` failed its scan."""
        if not self.ok_mask[index]:
            raise ImageUnavailable(index, "failed_scan", "recorded as failed in the manifest")

    def read(self, index: int) -> bytes:
        """The bytes of image ``index``, checked against the scan's content hash; raises ImageUnavailable."""
        self.check_available(index)
        try:
            data = self.source.read(index)
        except SourceReadError as exc:
            raise ImageUnavailable(index, exc.reason, exc.detail) from None
        if self.check_hash and content_hash(data).encode() != self.hashes[index]:
            raise ImageUnavailable(
                index, "changed", f"{self.source.path(index)} differs from the manifest (content hash)"
            )
        return data

    def load(self, index: int) -> np.ndarray:
        """Decoded RGB uint8 (H, W, 3) of image ``index``; raises ImageUnavailable."""
        return self.load_packed(index, lambda data: decode_rgb(data, self.decode))

    def load_packed(self, index: int, pack, channels_first: bool = False):
        """``pack(bytes)`` of image ``index`` (its decoded pixels, (H, W, 3) or with ``channels_first`` (3, H, W),
        or its bytes for a device decoder), checked like ``load``: hash, decode errors, and the decoded size of
        pixels; raises ImageUnavailable."""
        data = self.read(index)
        try:
            out = pack(data)
        except ImageDecodeError as exc:
            raise ImageUnavailable(index, exc.reason, exc.detail) from None
        if len(out.shape) == 3:  # pixels: their size must be the scanned one
            hw = tuple(out.shape[1:]) if channels_first else tuple(out.shape[:2])
            if hw != tuple(self.sizes[index]):
                raise ImageUnavailable(index, "changed", f"decoded size {hw} differs from the manifest")
        return out
