"""Data sets for training: folder layouts and class maps (``layouts``), the decoded-audio cache
(``cache``), the held-out split (``split``) and the torch ``Dataset`` over the cache
(``dataset``, the only module here that needs torch; it is not imported by this ``__init__``).
"""

from trainer.data.cache import AudioCache, build_cache, cache_key, default_cache_dir, load_audio_cache
from trainer.data.layouts import (
    FIXED_41_CLASSES,
    Clip,
    DataError,
    DatasetIndex,
    build_index,
    detect_layout,
)
from trainer.data.split import Split, stratified_split

__all__ = [
    "FIXED_41_CLASSES",
    "AudioCache",
    "Clip",
    "DataError",
    "DatasetIndex",
    "Split",
    "build_cache",
    "build_index",
    "cache_key",
    "default_cache_dir",
    "load_audio_cache",
    "detect_layout",
    "stratified_split",
]
