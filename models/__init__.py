"""Offline pipeline: export to ONNX, fit whitening, train the pair head, evaluate, pretrain.

Modules here import from `service` (one implementation of each transform), never the reverse.
torch and transformers are imported only inside the functions that need them.
"""
