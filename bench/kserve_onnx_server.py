"""KServe's ModelServer serving one ONNX file, for bench/router_overhead.py's comparison.

Runs in a virtual environment of its own with `kserve` and `onnxruntime` (the bench creates
it; kserve is not a meshserve dependency). A small custom `kserve.Model` runs the file with
one ONNX Runtime thread (as meshserve's runtime does by default) and answers V2 requests
with raw outputs; the ModelServer serves them on its gRPC V2 port (and REST, unused), with
its per-call log lines off (latency logging, and the gRPC interceptor's INFO line).

    /tmp/kserve-venv/bin/python bench/kserve_onnx_server.py --model-name add --model-file F.onnx \
        --grpc-port P --http-port Q
"""

from __future__ import annotations

import argparse
import logging

import kserve
import onnxruntime
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self.session: onnxruntime.InferenceSession | None = None
        self.output_names: list[str] = []

    def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(self.model_file, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        arrays = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.output_names, arrays)
        outputs = []
        for name, array in zip(self.output_names, results):
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    model = OnnxModel(args.model_name, args.model_file)
    model.load()
    print(f"kserve {kserve.__version__ if hasattr(kserve, '__version__') else ''} serving {args.model_name}", flush=True)
    server = ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1, enable_latency_logging=False)
    # Its best case: no log line per call (its gRPC interceptor logs every method at INFO).
    logging.getLogger("kserve").setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
