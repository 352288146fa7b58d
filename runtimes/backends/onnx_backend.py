"""ONNX Runtime backend (CPU; the CUDA provider when a GPU is present)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtimes.backends.base import Backend, Device, LoadedModel, Probe, TensorSpec
from runtimes.backends.onnx_tensors import NotOnnx, constant_tensor_bytes
from runtimes.datatypes import BF16
from runtimes.errors import InvalidInput, InvalidModel

log = logging.getLogger(__name__)

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

    Size: ONNX Runtime does not report a session's memory, but what grows with a
    model is its constant tensors, which a session holds as dense arrays: their bytes
    (`onnx_tensors`, from the file's dims and types, external data included) are the
    model's size. What every session costs besides (~110 KiB on CPU once it has run) is
    the fixed cost the runtime calibrates at start-up with `write_probe`'s model.
    """

    name = "onnx"
    file_suffixes = (".onnx",)
    versions = ("1",)  # as ModelMesh's and KServe's runtimes list ONNX
    uses_device = True  # the CUDA provider, when this onnxruntime build has it

    def __init__(self, intra_op_threads: int = 1) -> None:
        self._intra_op_threads = intra_op_threads

    def _providers(self, device: Device) -> list:
        if device.is_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            # Each session has its own device arena; grown to the next power of two (ONNX
            # Runtime's default) it may hold up to twice what the model needs, on a GPU that
            # many models share. Grown as requested, a model's measured device size is its own.
            cuda = {"device_id": device.index, "arena_extend_strategy": "kSameAsRequested"}
            return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
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
        return OnnxModel(session, _held_bytes(model_file))

    def write_probe(self, folder: Path) -> Probe:
        """y = x + c over FP32 [-1, 4]: a session with one node and one tiny initializer."""
        import onnx  # only at start-up, to build the probe
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "c"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
            initializer=[helper.make_tensor("c", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # what every onnxruntime since 1.10 reads
        path = folder / "model.onnx"
        onnx.save(model, str(path))
        return Probe(path, {"x": np.zeros((1, 4), np.float32)})


def _held_bytes(model_file: Path) -> int:
    """The model's constant tensors; 0 (unmeasured: the manager falls back to bytes on disk)
    for a file this reader cannot follow although ONNX Runtime loaded it."""
    try:
        return constant_tensor_bytes(model_file)
    except (NotOnnx, OSError) as error:
        log.warning("cannot size %s from its tensors (%s); charging its bytes on disk", model_file, error)
        return 0
