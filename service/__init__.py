"""simsvc: a semantic-similarity microservice on BERT (ONNX Runtime, whitening, pair head)."""

__version__ = "0.1.0"
