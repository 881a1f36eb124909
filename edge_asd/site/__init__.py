"""Site learning on the device: run the bundle's model over a stream's audio and enrol it.

The math (hold-out, components, fusion, thresholds, explanations) is numpy in
``edge_asd.core.site``; this package is the glue that needs the runtime and the file system:

``features``  windows on a hop grid -> indicators, spectral profiles, embeddings, ce, with provenance
``enrol``     files / folders / captured audio -> a fitted ``Enrolment`` with bundle sha and provenance
``capture``   minutes of one configured stream through the live capture path, split at gaps
``storage``   ``<state_dir>/enrolment/<stream>/`` and ``enrolment_status`` (missing / ok / stale)
``store``     feedback: an event's window features, labelled evidence and ``export_labels``
``evaluate``  ``evaluate-site``: enrol from normals, AUC/pAUC per component and fused

Device side: never torch, scipy or sklearn.
"""

from __future__ import annotations

from edge_asd.site.features import WindowFeatures, extract
from edge_asd.site.storage import (
    EnrolmentStatus,
    bundle_sha,
    enrolment_dir,
    enrolment_status,
    load_stream_enrolment,
    save_stream_enrolment,
)

__all__ = [
    "EnrolmentStatus",
    "WindowFeatures",
    "bundle_sha",
    "enrolment_dir",
    "enrolment_status",
    "extract",
    "load_stream_enrolment",
    "save_stream_enrolment",
]
