"""The store's metadata: one typed, frozen, versioned record, written once by extract and parsed once on open.

It lives in the root group's attributes under ``dpal_cache`` (docs/store-format.md lists every field).
Nothing outside ``dpal_cache/store`` reads those attributes by key: code asks a :class:`StoreMeta`.
Configs of other stages that a store records (its views, its extract config) stay mappings here (the
store does not depend on the stages that write it); their owners parse them (``from_dict(ViewsConfig,
meta.views)``).

    meta = StoreMeta.from_attrs(group.attrs["dpal_cache"], url)   # StoreError for another format version
    meta.layout.n_images, meta.teacher_dim, meta.precision.tokens
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dpal_cache.config import ConfigError, from_dict, to_dict
from dpal_cache.data.decode import DecodeConfig
from dpal_cache.store.errors import StoreError
from dpal_cache.store.layout import FORMAT_VERSION, StoreLayout

# what format 2 changed, for the message that refuses an older store
FORMAT_CHANGES = {2: "rows are stored uncompressed and read many per I/O, and the metadata is typed"}


@dataclass(frozen=True)
class PrecisionInfo:
    """How targets are stored, and the codecs' error measured on the calibration outputs."""

    tokens: str  # fp16 or int8
    maps: str  # fp16 or log8
    mask_at_extract: float | None = None  # background patch tokens (mask score <= this) were zeroed
    measured: dict | None = None  # tokens_rel_l2, <map>_kl_per_row (store.codecs.measure_precision)


@dataclass(frozen=True)
class CalibrationInfo:
    """The scalars of the calibration pass (its arrays are under ``calibration/``)."""

    low: float  # 1st percentile of the calibration projections
    high: float  # 99th percentile
    explained_variance: float  # of patch-token variance, by the mask component
    images: int
    sign: str = "centre of the patch grid projects positive"
    percentiles: tuple[int, int] = (1, 99)


@dataclass(frozen=True)
class StoreMeta:
    """Everything a store says about itself (``group.attrs["dpal_cache"]``)."""

    format_version: int
    dpal_cache_version: str
    layout: StoreLayout
    teacher: dict  # the teacher's description (Teacher.describe): name, dims, checkpoint sha256...
    views: dict  # the views config (ViewsConfig as a mapping)
    precision: PrecisionInfo
    identity: dict  # the extract config fields that decide stored values, plus "autocast"
    extract_config: dict  # the whole resolved extract config (ExtractConfig as a mapping)
    manifest_fingerprint: str
    source: dict  # the image source's description (kind, location, count)
    complete: bool = False
    calibration: CalibrationInfo | None = None
    images_ok: int | None = None  # set with complete
    images_not_cached: int | None = None

    @classmethod
    def from_attrs(cls, attrs: Any, url: str = "the store") -> StoreMeta:
        """Parse the stored attributes; StoreError for another format version (saying how to rebuild) or a
        record this dpal-cache cannot read."""
        if not isinstance(attrs, dict):
            raise StoreError(f"{url} has no dpal-cache attributes")
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            changed = FORMAT_CHANGES.get(FORMAT_VERSION, "")
            raise StoreError(
                f"{url} has store format version {version!r}; this dpal-cache reads version {FORMAT_VERSION}"
                f"{f' ({changed})' if changed and isinstance(version, int) and version < FORMAT_VERSION else ''}. "
                "Rebuild it: re-run its `dpal-cache extract` command with --overwrite (same teacher, views and "
                "seed give the same targets), or read it with the dpal-cache version that wrote it "
                f"({attrs.get('dpal_cache_version', 'unknown')}); plain zarr reads every array of it either way."
            )
        try:
            return from_dict(cls, attrs)
        except ConfigError as exc:
            raise StoreError(f"{url}: its attributes do not parse as a format {FORMAT_VERSION} store ({exc})") from None

    def to_attrs(self) -> dict[str, Any]:
        """The JSON-safe record stored in the attributes."""
        return to_dict(self)

    def replace(self, **changes: Any) -> StoreMeta:
        return dataclasses.replace(self, **changes)

    @property
    def teacher_name(self) -> str:
        return str(self.teacher["name"])

    @property
    def teacher_dim(self) -> int:
        """The teacher's token width: the decoder's output."""
        return int(self.teacher["embed_dim"])

    @property
    def decode(self) -> DecodeConfig:
        """How the store's images were decoded (every reader decodes them alike)."""
        return from_dict(DecodeConfig, self.extract_config["decode"])

    @property
    def background_dir(self) -> str | None:
        """The crowd backgrounds folder recorded at extract time (None: crowds without backgrounds)."""
        return self.views["crowd"].get("background_dir")

    @property
    def seed(self) -> int:
        """The views seed: every view, crowd recipe and per-epoch choice derives from it."""
        return int(self.views["seed"])
