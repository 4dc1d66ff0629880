"""The ONNX Runtime engine: one session over the exported decoder, numpy in and out. No torch.

The decoder's inputs and outputs are described in ``export/onnx_decoder.py``. A sequence's
state is its list of ``2 * L`` present tensors ``[1, h, n, hd]`` (keys and values, layer by
layer): caching a task's prefix is keeping that list, restoring it is passing it back as
``past_key_values``; ORT never writes into its inputs, so one cached prefix serves any number
of requests, concurrently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprompt.core.constants import TENSOR_EMBEDDINGS, TENSOR_EMBEDDINGS_SCALE, OnnxNames
from edgeprompt.core.errors import BundleError, EdgePromptError
from edgeprompt.core.files import read_safetensors
from edgeprompt.runtimes.backend import default_threads

#: Per layer key then value, each float32 [1, h, n, hd].
State = list


class OnnxEngine:
    """Owns the ``InferenceSession`` and the embedding table ``[V, d]``.

    >>> eng = OnnxEngine("model/decoder.onnx", "model/embeddings.safetensors")   # doctest: +SKIP
    >>> logits, state = eng.forward(eng.embed([12, 7]), eng.empty_state())        # [V], 2L x [1,h,2,hd]
    """

    def __init__(self, model_path: str | Path, embeddings_path: str | Path | None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgePromptError("the onnx backend needs onnxruntime: pip install 'edgeprompt[runtime]'") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or default_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgePromptError(f"ONNX Runtime could not load {model_path}: {e}") from None
        data = Path(str(model_path) + ".data")  # external weights, when the graph has them
        self.model_file_bytes = Path(model_path).stat().st_size + (data.stat().st_size if data.exists() else 0)
        N = OnnxNames
        names = [i.name for i in self.session.get_inputs()]
        # Our graphs take inputs_embeds; a stock optimum export takes input_ids (token ids only:
        # no soft prompt as embeddings, but KV prefixes still work). Both run here.
        self.takes_ids = N.INPUTS_EMBEDS not in names and "input_ids" in names
        self.takes_position_ids = N.POSITION_IDS in names
        self.embeddings_scale = None
        self.embeddings_zero_point = 0
        if embeddings_path is not None:
            t = read_safetensors(embeddings_path, "embedding table")
            self.embeddings = t[TENSOR_EMBEDDINGS]  # kept as written (fp16 or int8 stay small); rows widen per lookup
            if self.embeddings.ndim != 2:
                raise BundleError(f"{embeddings_path}: the embedding table is {list(self.embeddings.shape)}, not [V, d]; re-export the bundle.")
            self.embeddings_zero_point = 128 if self.embeddings.dtype == np.uint8 else 0  # U8: a shared Q8_0 head's q + 128
            if self.embeddings.dtype in (np.int8, np.uint8):
                scale = t.get(TENSOR_EMBEDDINGS_SCALE)
                V, d = self.embeddings.shape
                if scale is not None and scale.ndim == 1:  # one scale per row (bundles of 0.1)
                    scale = scale[:, None]
                if scale is None or scale.ndim != 2 or scale.shape[0] != V or scale.shape[1] < 1 or d % scale.shape[1]:
                    got = "none" if scale is None else list(scale.shape)
                    raise BundleError(
                        f"{embeddings_path}: an int8 embedding table [{V}, {d}] needs {TENSOR_EMBEDDINGS_SCALE!r} [V, G] with G dividing {d} (got {got}); re-export the bundle."
                    )
                self.embeddings_scale = scale.astype(np.float32)  # [V, G]: a scale per block of d/G
            elif self.embeddings.dtype not in (np.float32, np.float16):
                self.embeddings = self.embeddings.astype(np.float32)
            self.vocab_size, self.hidden_size = self.embeddings.shape
        elif self.takes_ids:
            self.embeddings = None
            self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
            self.hidden_size = None
        else:
            raise EdgePromptError(f"{model_path} takes inputs_embeds: the embedding table is needed too.")
        self.num_layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
        shape = self.session.get_inputs()[names.index(N.past_key(0))].shape  # [batch, h, past, hd]
        self.num_kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self._past_names = [n for i in range(self.num_layers) for n in (N.past_key(i), N.past_value(i))]
        self._out_names = [N.LOGITS] + [n for i in range(self.num_layers) for n in (N.present_key(i), N.present_value(i))]

    def empty_state(self) -> State:
        z = np.zeros((1, self.num_kv_heads, 0, self.head_dim), dtype=np.float32)
        return [z] * (2 * self.num_layers)

    @staticmethod
    def state_length(state: State) -> int:
        return int(state[0].shape[2])

    def state_from_kv(self, kv: np.ndarray) -> State:
        """``[L, 2, h, P, hd]`` (a bank's kv_prefix) -> a state."""
        kv = np.asarray(kv, dtype=np.float32)
        return [np.ascontiguousarray(kv[i, j][None]) for i in range(kv.shape[0]) for j in (0, 1)]

    @staticmethod
    def state_to_kv(state: State) -> np.ndarray:
        return np.stack([np.stack([state[2 * i][0], state[2 * i + 1][0]]) for i in range(len(state) // 2)])

    @staticmethod
    def state_bytes(state: State) -> int:
        return sum(a.nbytes for a in state)

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """Token ids ``[T]`` -> input embeddings ``[T, d]`` (float32; an int8 table's blocks times their scales)."""
        idx = np.asarray(ids, dtype=np.int64)
        rows = self.embeddings[idx].astype(np.float32)
        if self.embeddings_scale is None:
            return rows
        if self.embeddings_zero_point:
            rows -= self.embeddings_zero_point
        T, d = rows.shape
        G = self.embeddings_scale.shape[1]
        return (rows.reshape(T, G, d // G) * self.embeddings_scale[idx][:, :, None]).reshape(T, d)

    def forward(self, embeds: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Run ``embeds [T, d]`` after ``state``; return the last position's logits ``[V]`` and the new state."""
        if self.takes_ids:
            raise EdgePromptError("this ONNX graph takes token ids only (a stock optimum export): soft prompts need an edgeprompt export.")
        return self._run(OnnxNames.INPUTS_EMBEDS, np.ascontiguousarray(embeds, dtype=np.float32)[None], state)

    def forward_ids(self, ids: Sequence[int], state: State) -> tuple[np.ndarray, State]:
        """Run token ids ``[T]`` after ``state`` (an embedding lookup, or the graph's own)."""
        if self.takes_ids:
            return self._run("input_ids", np.asarray(ids, dtype=np.int64)[None], state)
        return self.forward(self.embed(ids), state)

    def _run(self, name: str, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        T = x.shape[1]
        past = self.state_length(state)
        feed = {name: x, OnnxNames.ATTENTION_MASK: np.ones((1, past + T), dtype=np.int64)}
        if self.takes_position_ids:
            feed[OnnxNames.POSITION_IDS] = np.arange(past, past + T, dtype=np.int64)[None]
        feed.update(zip(self._past_names, state))
        out = self.session.run(self._out_names, feed)
        logits = out[0]
        return (logits[0, -1] if logits.ndim == 3 else logits[0]), out[1:]
