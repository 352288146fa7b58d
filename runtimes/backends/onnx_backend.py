"""ONNX Runtime backend (CPU; the CUDA provider when a GPU is present)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtimes.backends.base import Backend, Device, LoadedModel, TensorSpec
from runtimes.datatypes import BF16
from runtimes.errors import InvalidInput, InvalidModel

_ORT_TO_V2 = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES",
}
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16; numpy has no such dtype for ORT to map


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, _ORT_TO_V2.get(arg.type, ""), shape)


class OnnxModel(LoadedModel):
    platform = "onnxruntime_onnx"

    def __init__(self, session: ort.InferenceSession, size: int) -> None:
        self._session = session
        self._size = size
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self._uses_bf16 = any(s.datatype == "BF16" for s in self.inputs + self.outputs)
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._output_names = [s.name for s in self.outputs]
        # numpy arrays go to ORT as they are unless a string or bfloat16 tensor needs converting
        self._feeds_as_given = not (self._uses_bf16 or self._string_inputs)

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        names = output_names or self._output_names
        feeds = inputs if self._feeds_as_given else {name: self._to_ort(name, array) for name, array in inputs.items()}
        try:
            if self._uses_bf16:
                return self._run_with_ort_values(feeds, names)
            results = self._session.run(names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as error:
            raise InvalidInput(f"the model rejected the inputs: {error}") from None
        return dict(zip(names, results))

    def _to_ort(self, name: str, array: np.ndarray):
        if name in self._string_inputs:
            try:  # ONNX strings are UTF-8 text; ORT would stringify raw bytes objects
                return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': BYTES for an ONNX string tensor must be UTF-8") from None
        if array.dtype == BF16:
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array).view(np.uint16), _ONNX_BFLOAT16)
        return array

    def _run_with_ort_values(self, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
        values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
        results = self._session.run_with_ort_values(names, values)
        return {name: _ort_value_to_numpy(value) for name, value in zip(names, results)}

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        self._session = None


def _ort_value_to_numpy(value: ort.OrtValue) -> np.ndarray:
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()
    # ORT cannot hand a bfloat16 tensor to numpy; copy its buffer (on the CPU) instead.
    shape = value.shape()
    count = int(np.prod(shape)) if shape else 1
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.frombuffer(bytes(buffer), dtype=BF16).reshape(shape)


class OnnxBackend(Backend):
    """Loads `.onnx` files into ONNX Runtime sessions.

    Each session gets `intra_op_threads` threads (default 1): hundreds of models
    share one process, and the runtime's own worker pool supplies the parallelism.

    Size: ONNX Runtime does not report a session's memory, and resident-memory
    growth around a load was tried and rejected (the first session in a process
    shows ~10 MiB of one-time setup; allocator reuse hides later ones). So the
    size is unmeasured (0) and the manager uses bytes on disk times its factor.
    """

    name = "onnx"
    file_suffixes = (".onnx",)

    def __init__(self, intra_op_threads: int = 1) -> None:
        self._intra_op_threads = intra_op_threads

    def _providers(self, device: Device) -> list:
        if device.is_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def load(self, model_file: Path, device: Device) -> OnnxModel:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model_file), sess_options=options, providers=self._providers(device))
        except Exception as error:  # ORT raises its own pybind classes for every load failure
            raise InvalidModel(f"ONNX Runtime cannot load {model_file.name}: {error}") from None
        return OnnxModel(session, 0)
