"""Graph fusions and int8 dynamic quantization for the exported encoder.

Fusions come from onnxruntime's transformers optimizer (Attention, EmbedLayerNormalization,
SkipLayerNormalization, BiasGelu). The fused graph is checked against PyTorch like the plain
export. Quantization is dynamic (weights int8 ahead of time, activations u8 per batch: the
u8s8 kernels that use AVX-512 VNNI / AVX-VNNI), on MatMul and the fused Attention, with one
weight scale per tensor (`int8`) or per output channel (`int8-channel`: closer to fp32 on
deeper models such as multilingual-e5-small, at the same speed); its cost in accuracy is
measured and recorded by the build.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("simsvc.build")

QUANTIZED_OPS = ("MatMul", "Attention")
QUANTIZATIONS = {"int8": False, "int8-channel": True}
"""`--quantize` choices: whether weight scales are per output channel."""


def quantization_method(kind: str) -> str:
    """How the manifest describes a quantization."""
    scales = "per channel" if QUANTIZATIONS[kind] else "per tensor"
    return f"dynamic int8: s8 weights {scales}, u8 activations; " + "+".join(QUANTIZED_OPS)


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


def quantize_int8(src: Path, dst: Path, per_channel: bool = False) -> None:
    """Dynamic int8 quantization of MatMul and Attention weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=list(QUANTIZED_OPS),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
