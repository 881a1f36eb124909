"""Training side of edge-asd: the TASTgram-MFN model, its losses, data, training and evaluation.

It stands on ``edge_asd.core`` only (never on the device side or the CLI; see the import
contracts in ``pyproject.toml``). One module per responsibility:

* torch-free: ``config`` (``TrainConfig``, every training default), ``selection`` (which epoch
  becomes ``model_best.pt``), ``progress`` (how long jobs report progress), ``clips``,
  ``calibrate``, ``metrics``, ``report``, ``data`` (layouts, audio cache, held-out split);
* torch: ``frontend``, ``model``, ``losses``, ``checkpoint``, ``steps`` (one training step),
  ``validation``, ``loop`` (the epochs), ``resume`` (per-epoch files), ``train`` (the whole
  run), ``inference``, ``references`` (knn references and thresholds), ``evaluate``,
  ``distributed``, ``data.dataset``, ``torch_runtime``.

This ``__init__`` must stay import-free.
"""
