"""Synthetic machine sounds: a stand-in for real data that tests, demos and CI can make in seconds.

numpy only (it also feeds the daemon's synthetic audio source on the Jetson). Two kinds of
machine live here:

- the DCASE-like machines (``MACHINE_TYPES`` x machine IDs): every machine type has its own
  kind of sound (rotating hum with harmonics, coloured flow noise, stroke cycles, valve clicks,
  belt ticks) and every ID of a type its own signature, derived from ``(type, id)`` alone. A
  model learns to tell the IDs apart; an anomaly (``ANOMALY_KINDS``) breaks its ID's signature
  and so is detected. ``make_dataset`` writes them in the DCASE 2020 layout;
- the site machines (``SITE_FAMILIES``): one machine as one site hears it, in a few operating
  modes, with anomalies that the condition indicators and a learned embedding each see
  differently (impacts, a new tone, a level-only change, a changed modulation).
  ``make_site_set`` writes a folder of normal clips and a labelled test folder.

Modules, one responsibility each:

``machines``        the DCASE-like catalogue: types, IDs, signatures, seeds, ``SynthError``
``dsp``             block-continuous building blocks: FIR noise, sines, wavetables, impacts
``anomalies``       the DCASE-like anomaly kinds
``stream``          ``MachineSoundStream`` (their renderer), ``render_clip``, ``make_stream_recording``
``dataset``         ``make_dataset`` (DCASE 2020 tree), ``resolve_types``, ``resolve_ids``
``site_machines``   site machines: families, a site drawn from ``(family, seed)``, operating modes
``site_anomalies``  one anomaly class per family; its docstring says which score should catch it
``site_stream``     ``SiteMachineStream`` (their renderer), ``render_site_clip``, ``make_site_recording``
``site_set``        ``make_site_set``: ``normal/`` to enrol from, ``test/`` labelled, ``site.json``
"""

from __future__ import annotations

from edge_asd.core.synth.anomalies import ANOMALY_KINDS
from edge_asd.core.synth.dataset import make_dataset, resolve_ids, resolve_types
from edge_asd.core.synth.machines import DEFAULT_IDS, DEFAULT_SNR_DB, MACHINE_TYPES, SYNTH_VERSION, SynthError
from edge_asd.core.synth.site_anomalies import SITE_VARIANTS, family_doc
from edge_asd.core.synth.site_machines import SITE_FAMILIES
from edge_asd.core.synth.site_set import make_site_set
from edge_asd.core.synth.site_stream import SiteMachineStream, make_site_recording, render_site_clip
from edge_asd.core.synth.stream import MachineSoundStream, make_stream_recording, render_clip

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_IDS",
    "DEFAULT_SNR_DB",
    "MACHINE_TYPES",
    "SITE_FAMILIES",
    "SITE_VARIANTS",
    "SYNTH_VERSION",
    "MachineSoundStream",
    "SiteMachineStream",
    "SynthError",
    "family_doc",
    "make_dataset",
    "make_site_recording",
    "make_site_set",
    "make_stream_recording",
    "render_clip",
    "render_site_clip",
    "resolve_ids",
    "resolve_types",
]
