"""One ONNX Runtime session on the CPU, as the bi-encoder and the cross-encoder both run it:
the session options (threads, memory arena, spinning), the provider, the graph's inputs
checked, and the feed made from a padded batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.types import FloatArray, IntArray

REQUIRED_INPUTS = frozenset({"input_ids", "attention_mask"})


class OnnxSession:
    """A CPU ONNX Runtime session tuned for batches of varying shape.

    `threads` 0 lets ONNX Runtime choose; `cpu_arena` keeps freed blocks for reuse (faster,
    but holds its peak); `spin` lets idle threads spin (answers the next run sooner, but
    burns CPU the event loop may need). `what` names the model in errors.
    """

    def __init__(
        self,
        model_path: Path,
        threads: int = 0,
        cpu_arena: bool = True,
        spin: bool = True,
        what: str = "ONNX model",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads > 0:
            options.intra_op_num_threads = threads
        # Shapes vary per batch: memory patterns would be planned (and kept) for each one.
        options.enable_mem_pattern = False
        # Off returns memory to the allocator after each run.
        options.enable_cpu_mem_arena = cpu_arena
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._session: Any = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = frozenset(i.name for i in self._session.get_inputs())
        if not self.input_names >= REQUIRED_INPUTS:
            raise ValueError(
                f"{what} inputs {sorted(self.input_names)} lack input_ids/attention_mask"
            )

    @property
    def takes_type_ids(self) -> bool:
        """Whether the graph has a `token_type_ids` input (BERT-like) or not (RoBERTa-like)."""
        return "token_type_ids" in self.input_names

    def outputs(self) -> list[Any]:
        """The graph's outputs (name and shape of each)."""
        return list(self._session.get_outputs())

    def run(
        self,
        names: Sequence[str],
        ids: IntArray,
        mask: IntArray,
        type_ids: IntArray | None = None,
    ) -> list[FloatArray]:
        """The named outputs for a padded batch; segment ids fed when the graph takes them
        (all zeros when not given)."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.takes_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids) if type_ids is None else type_ids
        return list(self._session.run(list(names), feed))
