"""dpal-cache: offline teacher-feature caching for DPAL distillation of lightweight human-centric ViTs.

Stage one (``dpal-cache extract``) runs a frozen teacher once over person images and writes its
tokens and attention maps to a Zarr store; stage two (``dpal-cache train``) trains students
against that cache without loading the teacher. See README.md.
"""

__version__ = "0.1.0"
