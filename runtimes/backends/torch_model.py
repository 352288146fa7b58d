"""What the PyTorch backend (`torch_backend`) does with torch, imported on its first load:
TorchScript (`.pt`) and `torch.export` programs (`.pt2`).

The signature comes from the exported program's example inputs (`.pt2`), from
a `schema.json` beside the model file ({"inputs": [{name, datatype, shape}],
"outputs": [...]}, ModelMesh's schema shape), or else from `forward`'s argument
names with datatypes left open. Outputs without names are OUTPUT__0, OUTPUT__1,
... (Triton's convention for PyTorch models).
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from runtimes.backends.base import Device, LoadedModel, Probe, TensorSpec
from runtimes.datatypes import BF16
from runtimes.errors import InvalidInput, InvalidModel
from runtimes.sizes import disk_size

# Request tensors are views of the request's bytes; the model gets them read-only
# on purpose (no copy), so torch's warning about non-writable arrays is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
# TorchScript is a format this runtime serves (and probes at start-up): torch's notice that
# torch.jit is deprecated is for authors of models, not for a server loading them.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)

_TORCH_TO_V2 = {
    torch.bool: "BOOL", torch.uint8: "UINT8", torch.uint16: "UINT16", torch.uint32: "UINT32", torch.uint64: "UINT64",
    torch.int8: "INT8", torch.int16: "INT16", torch.int32: "INT32", torch.int64: "INT64",
    torch.float16: "FP16", torch.float32: "FP32", torch.float64: "FP64", torch.bfloat16: "BF16",
}
SCHEMA_FILE = "schema.json"


def _to_tensor(name: str, array: np.ndarray, device: torch.device) -> torch.Tensor:
    if array.dtype == object:
        raise InvalidInput(f"input '{name}': PyTorch models take no BYTES tensors")
    if array.dtype == BF16:
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    return tensor.to(device, non_blocking=True) if device.type != "cpu" else tensor


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BF16)
    return tensor.numpy()


class TorchModel(LoadedModel):
    def __init__(self, module, platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 device: torch.device, size: int) -> None:
        self._module = module
        self.platform = platform
        self.inputs = inputs
        self.outputs = outputs
        self._device = device
        self._size = size

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        args = [_to_tensor(spec.name, inputs[spec.name], self._device) for spec in self.inputs]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            raise InvalidInput(f"the model rejected the inputs: {str(error).splitlines()[0]}") from None
        outputs = self._name_outputs(result)
        names = output_names or list(outputs)
        return {name: _to_numpy(outputs[name]) for name in names}

    def _name_outputs(self, result) -> dict[str, torch.Tensor]:
        if isinstance(result, dict):
            return dict(result)
        tensors = list(result) if isinstance(result, (tuple, list)) else [result]
        names = [spec.name for spec in self.outputs] if len(self.outputs) == len(tensors) else []
        return dict(zip(names or [f"OUTPUT__{i}" for i in range(len(tensors))], tensors))

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def _read_schema(folder: Path) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    path = folder / SCHEMA_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        specs = [[TensorSpec(t["name"], t.get("datatype", ""), tuple(t.get("shape", ()))) for t in doc.get(key, [])]
                 for key in ("inputs", "outputs")]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidModel(f"{SCHEMA_FILE} is not a valid schema: {error}") from None
    return specs[0], specs[1]


def _state_bytes(module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def load_model(model_file: Path, device: Device, cuda_lock: threading.Lock) -> TorchModel:
    """Load TorchScript (`.pt`, `.torchscript`) or a torch.export program (`.pt2`).

    Size: the bytes of the parameters and buffers (on a GPU, the growth of CUDA memory
    allocated during the load), never below the size of the file.
    """
    target = torch.device(f"cuda:{device.index}" if device.is_gpu and torch.cuda.is_available() else "cpu")
    with cuda_lock:
        allocated_before = torch.cuda.memory_allocated(target) if target.type == "cuda" else 0
        if model_file.suffix == ".pt2":
            module, inputs, outputs = _load_exported(model_file, target)
            platform = "pytorch_export"
        else:
            module, inputs, outputs = _load_torchscript(model_file, target)
            platform = "pytorch_libtorch"
        grown = torch.cuda.memory_allocated(target) - allocated_before if target.type == "cuda" else 0
    schema = _read_schema(model_file.parent)
    if schema is not None:
        inputs, outputs = schema
    size = max(grown, _state_bytes(module), disk_size(model_file))
    return TorchModel(module, platform, inputs, outputs, target, size)


def write_probe(folder: Path) -> Probe:
    """A TorchScript Linear(4, 2): the smallest module with parameters."""
    path = folder / "model.pt"
    torch.jit.script(torch.nn.Linear(4, 2).eval()).save(str(path))
    return Probe(path, {"input": np.zeros((1, 4), np.float32)})


def _load_torchscript(model_file: Path, target: torch.device):
    try:
        module = torch.jit.load(str(model_file), map_location=target).eval()
    except Exception as error:  # torch raises RuntimeError, ValueError or zipfile errors for bad files
        raise InvalidModel(f"torch cannot load {model_file.name} as TorchScript: {str(error).splitlines()[0]}") from None
    arguments = [a.name for a in module.forward.schema.arguments[1:]]  # [0] is self
    return module, [TensorSpec(name, "", ()) for name in arguments], []


def _load_exported(model_file: Path, target: torch.device):
    try:
        program = torch.export.load(str(model_file))
    except Exception as error:  # as above: any failure means the file is not a usable program
        raise InvalidModel(f"torch cannot load {model_file.name} as an exported program: {str(error).splitlines()[0]}") from None
    inputs = []
    for spec, value in zip(program.graph_signature.user_inputs, _example_values(program)):
        inputs.append(TensorSpec(spec, _TORCH_TO_V2.get(value.dtype, ""), tuple(int(d) for d in value.shape)))
    outputs = []
    output_nodes = [n for n in program.graph.nodes if n.op == "output"]
    values = output_nodes[0].args[0] if output_nodes else []
    for index, node in enumerate(values):
        meta = getattr(node, "meta", {}).get("val")
        if meta is not None and hasattr(meta, "dtype"):
            outputs.append(TensorSpec(f"OUTPUT__{index}", _TORCH_TO_V2.get(meta.dtype, ""), tuple(int(d) for d in meta.shape)))
    module = program.module().to(target)
    return module, inputs, outputs


def _example_values(program) -> list:
    """The fake tensors recorded for each user input of an exported program."""
    placeholders = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    return [placeholders[name] for name in program.graph_signature.user_inputs]
