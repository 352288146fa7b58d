from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallBatch(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallFrame]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallFrame, _Mapping]]] = ...) -> None: ...

class ReplyBatch(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[ReplyFrame]
    def __init__(self, replies: _Optional[_Iterable[_Union[ReplyFrame, _Mapping]]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("key", "value", "binary_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BINARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    binary_value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., binary_value: _Optional[bytes] = ...) -> None: ...

class CallFrame(_message.Message):
    __slots__ = ("id", "body", "metadata", "timeout_us", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    body: bytes
    metadata: _containers.RepeatedCompositeFieldContainer[Header]
    timeout_us: int
    cancel: bool
    def __init__(self, id: _Optional[int] = ..., body: _Optional[bytes] = ..., metadata: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., timeout_us: _Optional[int] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ReplyFrame(_message.Message):
    __slots__ = ("id", "body", "code", "message", "trailing_metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRAILING_METADATA_FIELD_NUMBER: _ClassVar[int]
    id: int
    body: bytes
    code: int
    message: str
    trailing_metadata: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, id: _Optional[int] = ..., body: _Optional[bytes] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., trailing_metadata: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...
