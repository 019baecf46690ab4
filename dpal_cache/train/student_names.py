"""The paper's students by short name (Table 5): the single source of the names, for the builder
(``train/students.py``) and the CLI help, importable without timm or torch."""

from __future__ import annotations

from typing import Any

# short names of the paper's students (Table 5) -> timm model names and the kwargs that make them so
STUDENT_ALIASES: dict[str, str] = {
    "vit_tiny_patch16": "vit_tiny_patch16_224",
    "vit_small_patch16": "vit_small_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
}
STUDENT_KWARGS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16": {"num_heads": 6},  # the paper's ViT-Ti (Table 5); timm's vit_tiny has 3 heads
}
DEFAULT_STUDENT = "vit_tiny_patch16"
STUDENTS_HELP = ", ".join(f"{name} (default)" if name == DEFAULT_STUDENT else name for name in STUDENT_ALIASES)
