"""The torch-free core that the device, the engines and the trainer all stand on.

numpy and soundfile only: audio I/O and the one resampler, the model's constants, the one
error type, crash-safe writes, the knn and ensemble scores, the one threshold fit, synthetic
machine sounds, and site learning (condition indicators, enrolment, fused scores). Nothing
here imports anything else of edge-asd, torch, scipy or sklearn; ``make lint`` checks it.
"""
