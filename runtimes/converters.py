"""Every protobuf <-> domain mapping of the runtime, in one place."""

from __future__ import annotations

import numpy as np

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as config_pb
from protos.v2_datatypes import CONTENTS_FIELD
from runtimes.backends import TensorSpec
from runtimes.dataplane import InferInput, InferRequest, InferResponse, ModelSignature
from runtimes.datatypes import decode_raw, element_count, encode_raw, numpy_dtype_of, shaped
from runtimes.errors import InvalidInput
from runtimes.model_manager import ModelEntry

def parameter_value(param: pb.InferParameter):
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def set_parameter(param: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def infer_request_from_proto(request: pb.ModelInferRequest) -> InferRequest:
    """Decode the inputs (raw or typed) into arrays; InvalidInput for any malformed tensor."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input, in order, or none"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):  # Triton refuses the mix too: which one would be the data?
                raise InvalidInput(f"input '{tensor.name}': contents must not be given when the request uses "
                                   "raw_input_contents; send every input one way")
            data = decode_raw(tensor.name, tensor.datatype, shape, raw[index])
        else:
            data = _decode_typed(tensor, shape)
        inputs.append(InferInput(tensor.name, tensor.datatype, shape, data))
    # Empty repeated and map fields are common; skip building from them (it costs per request).
    return InferRequest(
        model_id=request.model_name,
        inputs=inputs,
        output_names=[o.name for o in request.outputs] if request.outputs else [],
        request_id=request.id,
        parameters={k: parameter_value(v) for k, v in request.parameters.items()} if request.parameters else {},
    )


def _decode_typed(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {shape} has a negative dimension")
    dtype = numpy_dtype_of(datatype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInput(f"input '{name}': {len(values)} values in contents.{field}, expected {expected} for shape {shape}")
    if datatype == "BYTES":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return shaped(name, array, shape)
    try:
        # From a list: numpy reads a protobuf container through its buffer and wraps
        # values that do not fit (300 as UINT8 became 44); from Python ints it raises.
        return shaped(name, np.array(list(values), dtype=dtype), shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}': a value does not fit in {datatype}") from None


def infer_response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    """Outputs always go raw: one raw_output_contents entry per output, in order."""
    message = pb.ModelInferResponse(model_name=response.model_id, model_version="1", id=response.request_id)
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        message.raw_output_contents.append(encode_raw(output.data))
    return message


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


def metadata_to_proto(signature: ModelSignature) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=signature.name,
        versions=[signature.version],
        platform=signature.platform,
        inputs=[_tensor_metadata(s) for s in signature.inputs],
        outputs=[_tensor_metadata(s) for s in signature.outputs],
    )


def _config_datatype(datatype: str) -> int:
    name = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}" if datatype else "TYPE_INVALID"
    return config_pb.DataType.Value(name)


# Platforms whose backend in a ModelConfig is their own name (ONNX and PyTorch are Triton's names).
_CONFIG_BACKENDS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


def config_to_proto(signature: ModelSignature) -> pb.ModelConfigResponse:
    """A ModelConfig with name, platform, inputs and outputs: what perf_analyzer reads.

    max_batch_size is 0 (the dims are the full shapes, batch dimension included) unless the
    model's config.pbtxt set one: then the dims leave the batch dimension out, as Triton's do,
    and its dynamic_batching is passed on.
    """
    backend = "onnxruntime" if signature.platform.startswith("onnx") else _CONFIG_BACKENDS.get(signature.platform, "pytorch")
    batched = signature.max_batch_size > 0
    config = config_pb.ModelConfig(name=signature.name, platform=signature.platform, backend=backend,
                                   max_batch_size=signature.max_batch_size)
    for spec in signature.inputs:
        config.input.add(name=spec.name, data_type=_config_datatype(spec.datatype), dims=_dims(spec.shape, batched))
    for spec in signature.outputs:
        config.output.add(name=spec.name, data_type=_config_datatype(spec.datatype), dims=_dims(spec.shape, batched))
    batching = signature.dynamic_batching
    if batching is not None:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        config.dynamic_batching.preserve_ordering = batching.preserve_ordering
        config.dynamic_batching.priority_levels = batching.priority_levels
        config.dynamic_batching.default_priority_level = batching.default_priority_level
    return pb.ModelConfigResponse(config=config)


def _dims(shape: tuple[int, ...], batched: bool) -> list[int]:
    return list(shape[1:] if batched and shape else shape)


def statistics_to_proto(entries: list[tuple[str, ModelEntry]]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for model_id, entry in entries:
        stats = entry.stats
        item = response.model_stats.add(
            name=model_id, version="1", last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count, execution_count=stats.execution_count,
        )
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            duration = getattr(stats, name)
            target = getattr(item.inference_stats, name)
            target.count, target.ns = duration.count, duration.ns
        for rows, duration in sorted(stats.batches.items()):
            batch = item.batch_stats.add(batch_size=rows)
            batch.compute_infer.count, batch.compute_infer.ns = duration.count, duration.ns
    return response
