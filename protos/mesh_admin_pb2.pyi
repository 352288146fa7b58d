from protos import model_mesh_pb2 as _model_mesh_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCopy(_message.Message):
    __slots__ = ("instance_id", "status")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    status: _model_mesh_pb2.ModelStatusInfo.ModelStatus
    def __init__(self, instance_id: _Optional[str] = ..., status: _Optional[_Union[_model_mesh_pb2.ModelStatusInfo.ModelStatus, str]] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("id", "type", "path", "state", "copies", "last_failure", "size_bytes", "request_rate_per_min", "last_used_ms", "vmodels")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_MS_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    path: str
    state: _model_mesh_pb2.ModelStatusInfo.ModelStatus
    copies: _containers.RepeatedCompositeFieldContainer[ModelCopy]
    last_failure: str
    size_bytes: int
    request_rate_per_min: float
    last_used_ms: int
    vmodels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., state: _Optional[_Union[_model_mesh_pb2.ModelStatusInfo.ModelStatus, str]] = ..., copies: _Optional[_Iterable[_Union[ModelCopy, _Mapping]]] = ..., last_failure: _Optional[str] = ..., size_bytes: _Optional[int] = ..., request_rate_per_min: _Optional[float] = ..., last_used_ms: _Optional[int] = ..., vmodels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "in_sync")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    in_sync: bool
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., in_sync: _Optional[bool] = ...) -> None: ...

class FabricStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("id", "address", "zone", "capacity_bytes", "used_bytes", "loading_bytes", "models_total", "loads_in_progress", "request_rate_per_min", "lru_age_seconds", "shutting_down")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADING_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LOADS_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    LRU_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    zone: str
    capacity_bytes: int
    used_bytes: int
    loading_bytes: int
    models_total: int
    loads_in_progress: int
    request_rate_per_min: float
    lru_age_seconds: float
    shutting_down: bool
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., zone: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., loading_bytes: _Optional[int] = ..., models_total: _Optional[int] = ..., loads_in_progress: _Optional[int] = ..., request_rate_per_min: _Optional[float] = ..., lru_age_seconds: _Optional[float] = ..., shutting_down: _Optional[bool] = ...) -> None: ...

class FabricStatus(_message.Message):
    __slots__ = ("instances", "global_lru_age_seconds", "models_registered", "models_loaded", "models_failed", "models_loading", "vmodels", "capacity_bytes", "used_bytes", "time_ms", "in_sync")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_LRU_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FAILED_FIELD_NUMBER: _ClassVar[int]
    MODELS_LOADING_FIELD_NUMBER: _ClassVar[int]
    VMODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    global_lru_age_seconds: float
    models_registered: int
    models_loaded: int
    models_failed: int
    models_loading: int
    vmodels: int
    capacity_bytes: int
    used_bytes: int
    time_ms: int
    in_sync: bool
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., global_lru_age_seconds: _Optional[float] = ..., models_registered: _Optional[int] = ..., models_loaded: _Optional[int] = ..., models_failed: _Optional[int] = ..., models_loading: _Optional[int] = ..., vmodels: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., time_ms: _Optional[int] = ..., in_sync: _Optional[bool] = ...) -> None: ...
