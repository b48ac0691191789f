"""Defaults that more than one module reads, defined once (no heavy imports here)."""

# Weight of the neck-feature term in the distillation loss; the logit terms stay at 1. Off: matching
# the features of a narrower, differently-activated student cost the ReLU students accuracy.
DEFAULT_KD_FEATURE_WEIGHT = 0.0

# The served detector: its largest batch (the repository's max_batch_size, the TensorRT plans'
# optimization profile) and how many instances share the machine's cores. Each instance runs
# ONNX Runtime on its share of the cores, so that share is also the thread count every latency
# the report and the search decide on is measured at.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_DETECTOR_INSTANCES = 2

# A camera stream: frames per second, and the latency a frame must be answered within (from its
# due time). The load tests' defaults (loadtest.spec) and the capacity plan's cameras.
DEFAULT_CAMERA_FPS = 10.0
DEFAULT_SLO_MS = 100.0
