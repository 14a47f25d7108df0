"""The gRPC message limit setting: up to gRPC's 2 GiB - 1 ceiling, and what gRPC itself lets through."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medserve.settings import GRPC_MAX_MESSAGE_BYTES, Settings
from medserve.transport.grpc_server import transport_limit


def test_the_limit_goes_up_to_two_gib_and_no_further() -> None:
    assert Settings(grpc_max_message_bytes=GRPC_MAX_MESSAGE_BYTES).grpc_max_message_bytes == 2**31 - 1
    assert Settings().grpc_max_message_bytes is None  # max_request_bytes applies
    with pytest.raises(ValidationError):
        Settings(grpc_max_message_bytes=2**31)


def test_grpc_lets_through_twice_the_limit_up_to_its_ceiling() -> None:
    assert transport_limit(1 << 20) == 2 << 20
    assert transport_limit(GRPC_MAX_MESSAGE_BYTES) == GRPC_MAX_MESSAGE_BYTES
    assert transport_limit(1 << 30) == GRPC_MAX_MESSAGE_BYTES
