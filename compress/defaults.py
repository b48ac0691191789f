"""Defaults that more than one module reads, defined once (no heavy imports here)."""

# Weight of the neck-feature term in the distillation loss; the logit terms stay at 1. Off: matching
# the features of a narrower, differently-activated student cost the ReLU students accuracy.
DEFAULT_KD_FEATURE_WEIGHT = 0.0
