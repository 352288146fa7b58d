"""GPU check of the runtime's backends: torch on CUDA, ONNX Runtime's CUDA provider, and the
load time and measured size of a model of about 500 MB.

It drives the backends (`runtimes.backends`) directly, the way the model manager does, so it
needs only numpy, onnx, onnxruntime (onnxruntime-gpu for the CUDA provider), ml_dtypes and
torch: no etcd, no gRPC server, nothing fetched. That lets it run on a bare GPU machine.

Steps, each printed as a row of a markdown table:
1. what is there: torch and its CUDA device, ONNX Runtime and its providers;
2. small models on the device, each checked against the same model on the CPU: a
   TorchScript Linear, a torch.export MLP, a TorchScript `x * 2` with FP16 and BF16 inputs,
   and the tests' ONNX `add` model (which must run on the CUDA provider when it is there);
3. a model of `--size-mb` (a chain of square Linear layers), as TorchScript and as ONNX:
   load time, the size the backend measured, the device size the runtime measures
   (`runtimes.device_memory.DeviceMeter`: device memory in use after the load less
   before, NVML first), the file's size, one inference checked against the CPU, and that
   unloading gives the memory back;
4. `--cycles` load/unload cycles (default 100) of a model of `--cycle-size-mb` per backend:
   device memory in use after them less before, and the time per cycle;
5. batching on vs off on the device: bench/batching.py's heavier model (four 1024-wide
   layers) as TorchScript in a model manager, unbatched and batched, 32 concurrent callers
   and then one: requests/s, the mean batch, p50 at one caller, and the batched answers
   checked against the same requests alone.

    python bench/gpu_check.py [--size-mb 500] [--cycles 100] [--cycle-size-mb 64] [--device cuda|cpu] [--batching-seconds 2]
                            [--out FILE]

`--device cpu` runs the same steps on the CPU, to try the script where there is no GPU.
Exit status: 0 every check passed, 1 a check failed, 2 no CUDA device for `--device cuda`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from runtimes.backends import BackendRegistry, Device, LoadedModel  # noqa: E402
from runtimes.backends.onnx_backend import OnnxBackend  # noqa: E402
from runtimes.backends.torch_backend import TorchBackend  # noqa: E402
from runtimes.device_memory import DeviceMeter, read_device_memory  # noqa: E402
from runtimes.model_manager import ManagerConfig, ModelManager  # noqa: E402
from tests.support.models import add_onnx, exported_mlp, torchscript_linear  # noqa: E402

MIB = 1 << 20


class Report:
    """Rows of one markdown table; remembers whether any check failed."""

    def __init__(self) -> None:
        self.lines = ["| step | result | detail |", "|---|---|---|"]
        self.failed = False

    def row(self, step: str, ok: bool | None, detail: str) -> None:
        result = "n/a" if ok is None else "ok" if ok else "FAILED"
        self.failed |= ok is False
        self.lines.append(f"| {step} | {result} | {detail} |")
        print(self.lines[-1], flush=True)


def device_memory(device: torch.device) -> int:
    """Bytes in use on the GPU by every allocator (torch's and ONNX Runtime's), as the runtime
    reads them (`runtimes.device_memory`: NVML, else torch). 0 on the CPU."""
    if device.type != "cuda":
        return 0
    memory = read_device_memory(device.index or 0)
    return memory.used if memory is not None else 0


def measured_load(backend, path: Path, device: Device) -> tuple[LoadedModel, int]:
    """The loaded model and the device bytes its load took, measured as the model manager does."""
    if not device.is_gpu:
        return backend.load(path, device), 0
    return DeviceMeter().measure(device.index, functools.partial(backend.load, path, device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    return actual.keys() == expected.keys() and all(
        np.allclose(np.asarray(actual[k], dtype=np.float32), np.asarray(expected[k], dtype=np.float32), rtol=rtol, atol=atol)
        for k in expected)


def providers_of(loaded: LoadedModel) -> list[str]:
    """The execution providers ONNX Runtime really chose for a loaded ONNX model, best first."""
    return loaded._session.get_providers()  # noqa: SLF001 - a check of the backend's own session


# -- models --------------------------------------------------------------------------------
class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def linear_chain(width: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(width, width, bias=False) for _ in range(layers))).eval()


def chain_as_onnx(module: torch.nn.Module, path: Path) -> Path:
    """The same chain as an ONNX graph of MatMuls (weights transposed: Linear computes x @ W.T)."""
    weights = [layer.weight.detach().numpy().T.copy() for layer in module]
    width = weights[0].shape[0]
    nodes, initializers, previous = [], [], "x"
    for index, weight in enumerate(weights):
        name, output = f"w{index}", ("y" if index == len(weights) - 1 else f"h{index}")
        initializers.append(numpy_helper.from_array(weight, name))
        nodes.append(helper.make_node("MatMul", [previous, name], [output]))
        previous = output
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# -- steps ---------------------------------------------------------------------------------
def environment(report: Report, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report.row("torch", True, f"{torch.__version__}, device {device} ({name})")
    providers = ort.get_available_providers()
    report.row("onnxruntime", True, f"{ort.__version__}, providers {', '.join(providers)}")


def small_models(report: Report, work: Path, device: Device, target: torch.device) -> None:
    torch_backend, onnx_backend = TorchBackend(), OnnxBackend()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)

    path, module = torchscript_linear(work / "linear" / "model.pt")
    loaded = torch_backend.load(path, device)
    expected = module(torch.from_numpy(x)).detach().numpy()
    outputs = loaded.infer({"input": x}, [])
    report.row("TorchScript Linear", close(outputs, {name: expected for name in outputs}) and len(outputs) == 1,
               f"platform {loaded.platform}, outputs {list(outputs)}")
    loaded.unload()

    path, module = exported_mlp(work / "mlp" / "model.pt2")
    loaded = torch_backend.load(path, device)
    expected = module(torch.from_numpy(x)).detach().numpy()
    outputs = loaded.infer({loaded.inputs[0].name: x}, [])
    report.row("torch.export MLP", close(outputs, {name: expected for name in outputs}) and len(outputs) == 1,
               f"platform {loaded.platform}, inputs {[s.name for s in loaded.inputs]}")
    loaded.unload()

    path = work / "double" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.jit.script(Double()).save(str(path))
    loaded = torch_backend.load(path, device)
    for label, dtype in (("FP16", np.float16), ("BF16", ml_dtypes.bfloat16)):
        half = x.astype(dtype)
        outputs = loaded.infer({"x": half}, [])
        (result,) = outputs.values()
        same_type = np.asarray(result).dtype == np.dtype(dtype)
        report.row(f"TorchScript x*2 {label}", same_type and close(outputs, {k: x * 2 for k in outputs}, rtol=1e-2, atol=1e-2),
                   f"output dtype {np.asarray(result).dtype}")
    loaded.unload()

    path = add_onnx(work / "add" / "model.onnx")
    loaded = onnx_backend.load(path, device)
    providers = providers_of(loaded)
    outputs = loaded.infer({"x": x}, [])
    wanted = "CUDAExecutionProvider" if target.type == "cuda" else "CPUExecutionProvider"
    on_wanted = providers[0] == wanted
    if not on_wanted and wanted not in ort.get_available_providers():
        on_wanted = None  # this onnxruntime build has no CUDA provider: not a failure of ours
    report.row("ONNX add", close(outputs, {"y": x + 1, "z": x * 2}) and on_wanted is not False,
               f"providers {providers}" + ("" if on_wanted is not None else " (no CUDA provider in this build: install onnxruntime-gpu)"))
    loaded.unload()


def large_model(report: Report, work: Path, device: Device, target: torch.device, size_mb: int) -> None:
    width = 4096
    layers = max(1, round(size_mb * MIB / (width * width * 4)))
    module = linear_chain(width, layers)
    x = np.random.default_rng(1).standard_normal((2, width)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    files = {"TorchScript": work / "large-pt" / "model.pt", "ONNX": work / "large-onnx" / "model.onnx"}
    for path in files.values():
        path.parent.mkdir(parents=True)
    torch.jit.script(module).save(str(files["TorchScript"]))
    chain_as_onnx(module, files["ONNX"])
    del module

    for label, backend in (("TorchScript", TorchBackend()), ("ONNX", OnnxBackend())):
        path = files[label]
        synchronize(target)
        before = device_memory(target)
        started = time.perf_counter()
        loaded, device_bytes = measured_load(backend, path, device)
        synchronize(target)
        seconds = time.perf_counter() - started
        held = device_memory(target) - before
        measured = loaded.size_bytes()
        where = providers_of(loaded)[0] if label == "ONNX" else str(target)
        outputs = loaded.infer({loaded.inputs[0].name: x}, [])
        right = close(outputs, {name: expected for name in outputs}, rtol=1e-2, atol=1e-3) and len(outputs) == 1
        loaded.unload()
        del loaded
        synchronize(target)
        kept = device_memory(target) - before
        size = f"{measured / MIB:.0f} MiB" if measured else "not measured (the manager uses file size x size_factor)"
        file_bytes = path.stat().st_size
        detail = (f"{layers} x Linear({width}, {width}) on {where}; file {file_bytes / MIB:.0f} MiB; load {seconds:.2f} s; "
                  f"size {size}; measured on the device {device_bytes / MIB:.0f} MiB; device memory used "
                  f"{held / MIB:.0f} MiB, after unload {kept / MIB:.0f} MiB")
        # Unloading must give the weights back; libraries' handles and workspaces may stay.
        report.row(f"{label} ~{size_mb} MB", right and kept < file_bytes // 10, detail)


def load_unload_cycles(report: Report, work: Path, device: Device, target: torch.device, size_mb: int,
                       cycles: int) -> None:
    """`cycles` loads and unloads of one model per backend: what stays in use on the device."""
    width = 2048
    layers = max(1, round(size_mb * MIB / (width * width * 4)))
    module = linear_chain(width, layers)
    files = {"TorchScript": work / "cycle-pt" / "model.pt", "ONNX": work / "cycle-onnx" / "model.onnx"}
    for path in files.values():
        path.parent.mkdir(parents=True)
    torch.jit.script(module).save(str(files["TorchScript"]))
    chain_as_onnx(module, files["ONNX"])
    for label, backend in (("TorchScript", TorchBackend()), ("ONNX", OnnxBackend())):
        path = files[label]
        backend.load(path, device).unload()  # the backend's one-time setup on the device, not the cycles'
        synchronize(target)
        before = device_memory(target)
        started = time.perf_counter()
        for _ in range(cycles):
            backend.load(path, device).unload()
        synchronize(target)
        seconds = (time.perf_counter() - started) / cycles
        kept = device_memory(target) - before
        file_bytes = path.stat().st_size
        report.row(f"{label} {cycles} load/unload cycles", kept < file_bytes // 4,
                   f"{file_bytes / MIB:.0f} MiB model; {seconds * 1000:.0f} ms per cycle; device memory after "
                   f"{cycles} cycles {kept / MIB:+.0f} MiB against before")


@dataclasses.dataclass
class _OnDisk:
    local_path: Path


class _FilesOnDisk:
    """The model manager's artifacts, for files this script wrote (no puller, no storage)."""

    async def pull(self, model_id: str, model_path: str, model_key: str | None = None) -> _OnDisk:
        return _OnDisk(Path(model_path))

    async def release(self, model_id: str) -> None:
        pass


def batching_model(folder: Path, width: int = 1024, layers: int = 4) -> Path:
    """bench/batching.py's heavier model (`layers` Linear(width, width) with ReLU) as TorchScript,
    with a schema.json that gives it a batch dimension (one TorchScript cannot say its shapes)."""
    torch.manual_seed(0)
    body = [module for _ in range(layers) for module in (torch.nn.Linear(width, width), torch.nn.ReLU())]
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(torch.nn.Sequential(*body[:-1]).eval()).save(str(folder / "model.pt"))
    spec = {"datatype": "FP32", "shape": [-1, width]}
    (folder / "schema.json").write_text(json.dumps({"inputs": [{"name": "x", **spec}],
                                                    "outputs": [{"name": "y", **spec}]}))
    return folder


async def _callers(manager: ModelManager, model_id: str, rows: list[np.ndarray], seconds: float) -> tuple[float, list[float]]:
    """len(rows) callers, each sending its row back to back for `seconds`: (requests/s, latencies)."""
    clock = time.perf_counter
    end = clock() + seconds
    latencies: list[float] = []

    async def caller(x: np.ndarray) -> None:
        while (started := clock()) < end:
            await manager.run(model_id, {"x": x}, [])
            latencies.append(clock() - started)
            await asyncio.sleep(0)  # a run on the event loop does not yield

    await asyncio.gather(*(caller(x) for x in rows))
    return len(latencies) / seconds, latencies


async def _batching_figures(folder: Path, device: Device, callers: int, seconds: float) -> tuple[bool, str]:
    config = ManagerConfig(capacity_bytes=16 << 30, device=device, max_concurrency=8, max_queue=4 * callers)
    manager = ModelManager(config, BackendRegistry([TorchBackend()]), _FilesOnDisk())
    key = json.dumps({"batching": {"max_batch_size": 32, "max_queue_delay_us": 500}})
    try:
        await manager.load("off", "pytorch", str(folder))
        await manager.load("on", "pytorch", str(folder), key)
        rng = np.random.default_rng(0)
        rows = [rng.random((1, 1024), dtype=np.float32) for _ in range(callers)]
        # The batched answers against the same requests alone (concurrent, so they batch).
        alone = [await manager.run("off", {"x": x}, []) for x in rows]
        together = await asyncio.gather(*(manager.run("on", {"x": x}, []) for x in rows))
        same = all(close(a, b) for a, b in zip(together, alone))
        figures = {}
        for mode in ("off", "on", "off", "on"):  # alternating; the second of each counts (warm)
            stats = manager.get(mode).stats
            before = (stats.inference_count, stats.execution_count)
            rps, _ = await _callers(manager, mode, rows, seconds)
            after = (stats.inference_count, stats.execution_count)
            _, lone = await _callers(manager, mode, rows[:1], seconds / 2)
            figures[mode] = rps, float(np.median(lone)) * 1000, (after[0] - before[0]) / max(after[1] - before[1], 1)
        (off, off_p50, _), (on, on_p50, batch) = figures["off"], figures["on"]
        return same, (f"{callers} callers: off {off:,.0f} req/s, on {on:,.0f} req/s (**{on / off:.2f}x**), mean "
                      f"batch {batch:.1f}; 1 caller p50 {off_p50:.2f} ms off, {on_p50:.2f} ms on; batched answers "
                      f"{'equal' if same else 'DIFFER FROM'} those alone")
    finally:
        await manager.close()


def batching_on_vs_off(report: Report, work: Path, device: Device, callers: int = 32, seconds: float = 2.0) -> None:
    """Dynamic batching on the device: the heavier model of bench/batching.py as TorchScript,
    in a model manager twice (as it is; batched with max_batch_size 32, max_queue_delay_us
    500), `callers` concurrent one-row requests and then one caller, each way; the
    batched answers checked against the same requests alone."""
    same, detail = asyncio.run(_batching_figures(batching_model(work / "batching-mlp"), device, callers, seconds))
    report.row("batching on vs off (TorchScript 4x1024 MLP)", same, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500, help="size of the large model (default 500)")
    parser.add_argument("--cycles", type=int, default=100, help="load/unload cycles per backend (default 100)")
    parser.add_argument("--cycle-size-mb", type=int, default=64, help="size of the cycled model (default 64)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batching-seconds", type=float, default=2.0, help="each window of the batching step")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch: run with --device cpu to try the steps on the CPU", file=sys.stderr)
        return 2
    device = Device(args.device, 0)
    target = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    report = Report()
    print("\n".join(report.lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        environment(report, target)
        small_models(report, work, device, target)
        large_model(report, work, device, target, args.size_mb)
        load_unload_cycles(report, work, device, target, args.cycle_size_mb, args.cycles)
        batching_on_vs_off(report, work, device, seconds=args.batching_seconds)
    if args.out:
        args.out.write_text("\n".join(report.lines) + "\n")
    print("\nevery check passed" if not report.failed else "\nSOME CHECKS FAILED", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
