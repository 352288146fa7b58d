"""Settings of one router process: CLI flags override MESHSERVE_* variables override defaults."""

from __future__ import annotations

import argparse

from pydantic import Field, field_validator

from mesh.settings import FabricSettings, add_fabric_flags

__all__ = ["RouterSettings", "add_router_flags"]


class RouterSettings(FabricSettings):
    """Every default of `meshserve router` is written here once."""

    host: str = Field("0.0.0.0", description="Address the gRPC and REST servers bind.")
    port: int = Field(8033, description="gRPC port: V2 inference and the mmesh.ModelMesh management API (ModelMesh's 8033).")
    rest_port: int = Field(8008, description="REST V2 port (KServe's 8008); 0 turns REST off.")
    metrics_port: int = Field(2112, description="Prometheus /metrics port; 0 turns it off. With several workers, worker i uses metrics_port + i.")
    default_deadline_s: float = Field(60.0, gt=0, description="Deadline of a call that brings none (seconds); bounds the wait for a load.")
    max_tries: int = Field(3, ge=1, description="Instances one call is sent to at most before it fails UNAVAILABLE (copies gone or unreachable).")
    suspect_s: float = Field(2.0, ge=0, description="Seconds an instance that failed a call is tried last by other calls.")
    max_message_bytes: int = Field(16 << 20, gt=0, description="Largest gRPC message accepted from clients or sent to instances (bytes), both ways.")
    workers: int = Field(1, ge=1, description="Router processes sharing the ports (SO_REUSEPORT); 1 runs in this process.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            raise ValueError("host must not be empty")
        return value


def add_router_flags(parser: argparse.ArgumentParser) -> None:
    add_fabric_flags(parser)
    parser.add_argument("--host", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="gRPC port (default 8033)")
    parser.add_argument("--rest-port", type=int, help="REST V2 port, 0 for none (default 8008)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port, 0 for none (default 2112)")
    parser.add_argument("--default-deadline-s", type=float, help="deadline of calls without one (default 60)")
    parser.add_argument("--max-tries", type=int, help="instances tried per call at most (default 3)")
    parser.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 16 MiB)")
    parser.add_argument("--workers", type=int, help="router processes sharing the ports (default 1)")
    parser.add_argument("--log-level", help="logging level (default INFO)")
