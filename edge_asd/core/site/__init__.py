"""Site learning, the numpy part: learn one stream's normal from minutes of its own audio.

A plant has minutes of its machines' normal sound, recorded by its own microphone, and no
DCASE-sized training set; a model trained on those few clips memorises them. So instead of
training per site, a stream is *enrolled*: its windows' condition indicators
(``edge_asd.core.indicators``), spectral profiles (fine spectrum and envelope spectrum,
``edge_asd.core.spectra``), the bundle model's embeddings and (when the machine type is one of
the bundle's classes) its cross-entropy score are measured on normal audio, and each becomes
a score component normalised against its own out-of-fold normal distribution; the fused score
is the largest surprise. Modules, one responsibility each:

``holdout``     ``WindowRef`` and the cross-fitting over whole stretches of time
``covariance``  Ledoit-Wolf shrinkage, written out (no sklearn on the device)
``components``  ``indicators`` (robust z + Mahalanobis), ``spectrum`` (nearest enrolled fine spectrum),
                ``envelope`` (per-bin range of the envelope spectrum), ``knn`` (embeddings);
                feedback exemplars
``normalise``   surprise = -log10 P_normal(S >= s) from the one gamma fit
``explain``     which indicators moved, in words and numbers
``enrolment``   ``fit_enrolment``, ``Enrolment`` (score, explain, add_normal, save/load)
``metrics``     AUC and DCASE pAUC, numpy only
``labels``      normal/anomaly labels from clip names in every supported layout

No I/O except ``Enrolment.save``/``load``; running the model over audio is ``edge_asd.site``.
"""

from __future__ import annotations

from edge_asd.core.site.components import CE, COMPONENTS, ENVELOPE, INDICATORS, KNN, SPECTRUM
from edge_asd.core.site.enrolment import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_FALSE_ALARMS_PER_DAY,
    ComponentScores,
    Enrolment,
    EnrolmentError,
    SiteScore,
    SiteScores,
    WindowSet,
    false_alarm_rate_for,
    fit_enrolment,
    load_enrolment,
)
from edge_asd.core.site.explain import Explanation, MovedIndicator
from edge_asd.core.site.holdout import HOLDOUT_RULE, WindowRef, assign_folds, cross_fit_plan, reference_mask
from edge_asd.core.site.metrics import auc, pauc

__all__ = [
    "CE",
    "COMPONENTS",
    "DEFAULT_FALSE_ALARMS_PER_DAY",
    "DEFAULT_FALSE_ALARM_RATE",
    "ENVELOPE",
    "HOLDOUT_RULE",
    "INDICATORS",
    "KNN",
    "SPECTRUM",
    "ComponentScores",
    "Enrolment",
    "EnrolmentError",
    "Explanation",
    "MovedIndicator",
    "SiteScore",
    "SiteScores",
    "WindowRef",
    "WindowSet",
    "assign_folds",
    "auc",
    "cross_fit_plan",
    "false_alarm_rate_for",
    "fit_enrolment",
    "load_enrolment",
    "pauc",
    "reference_mask",
]
