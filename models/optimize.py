"""Graph fusions and int8 dynamic quantization for the exported encoder.

Fusions come from onnxruntime's transformers optimizer (Attention, EmbedLayerNormalization,
SkipLayerNormalization, BiasGelu). The fused graph is checked against PyTorch like the plain
export. Quantization is dynamic (weights int8 ahead of time, activations u8 per batch: the
u8s8 kernels that use AVX-512 VNNI / AVX-VNNI), per-tensor, on MatMul and the fused
Attention; its cost in accuracy is measured and recorded by the build.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("simsvc.build")

QUANTIZED_OPS = ("MatMul", "Attention")


def fuse_graph(src: Path, dst: Path, num_heads: int, hidden: int) -> dict[str, int]:
    """Write the fused graph to dst; returns the count of each fused operator.

    Only portable fusions are applied (opt_level 1): the file runs on any CPU.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("onnxruntime.transformers").level
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        try:
            model = optimize_model(
                str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=1
            )
        finally:
            logging.getLogger("onnxruntime.transformers").setLevel(level)
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(dst))
    return stats


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of MatMul and Attention weights (per tensor)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=False,
        op_types_to_quantize=list(QUANTIZED_OPS),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
