"""The view machinery both stages share: deterministic teacher views, crowd images, student crops.

Modules, one job each:
- ``config``  typed frozen configs (``ViewsConfig`` and its sections; YAML in configs/views.yaml)
- ``params``  view parameters as pure functions of (seed, index, view); the stored vector layout
- ``render``  parameters + decoded RGB uint8 -> uint8 (3, H, W) view; ``normalize`` separately
- ``crowd``   synthetic multi-person recipes (``copy-paste`` / ``release``) and their rendering
- ``local``   student-only local crops, fresh per epoch
- ``preview`` a labelled PNG contact sheet (``dpal-cache viz views``)

Only the numpy-only parts are re-exported here, so importing ``dpal_cache.views`` in a worker
does not pull in torch; import ``render``/``crowd``/``local``/``preview`` explicitly.
"""

from dpal_cache.views.config import CrowdConfig, GlobalViewConfig, LocalCropConfig, ViewAugConfig, ViewsConfig
from dpal_cache.views.params import PARAM_LEN, ViewParams, global_view_params, image_view_params

__all__ = [
    "CrowdConfig",
    "GlobalViewConfig",
    "LocalCropConfig",
    "PARAM_LEN",
    "ViewAugConfig",
    "ViewParams",
    "ViewsConfig",
    "global_view_params",
    "image_view_params",
]
