"""What stops the server from starting is said in one line naming the door and how to move it."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from medserve.logs import QUIET_LIBRARIES, configure_logging
from medserve.settings import Settings
from medserve.startup import StartupFailure, bind_failure, check_data_dir, doors


def test_doors_follow_the_settings() -> None:
    assert [d.name for d in doors(Settings())] == ["HTTP", "gRPC", "DICOM"]
    off = Settings(grpc_port=-1, dicom_port=-1)
    assert [(d.name, d.port, d.flag, d.variable) for d in doors(off)] == [
        ("HTTP", 8000, "--http-port", "MEDSERVE_HTTP_PORT")
    ]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EADDRINUSE, "DICOM port 11112 on 127.0.0.1 is already in use"),
        (errno.EACCES, "DICOM port 11112 on 127.0.0.1 cannot be opened: permission denied"),
    ],
)
def test_a_bind_failure_names_the_door_and_how_to_move_it(code: int, words: str) -> None:
    dicom = doors(Settings())[2]
    message = str(bind_failure(dicom, OSError(code, "refused")))
    assert message.startswith(words), message
    assert message.endswith(
        "choose another port with --dicom-port PORT or MEDSERVE_DICOM_PORT=PORT "
        "(--dicom-port -1 turns the DICOM door off)"
    ), message


def test_an_address_not_of_this_machine_names_the_host_setting() -> None:
    http = doors(Settings(host="10.255.255.1"))[0]
    message = str(bind_failure(http, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")))
    assert message == "HTTP: 10.255.255.1 is not an address of this machine; set --host or MEDSERVE_HOST"
    unknown = str(bind_failure(http, socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    assert "the host '10.255.255.1' is not an address of this machine" in unknown


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(StartupFailure, match="exists and is not a folder: set --data-dir"):
        check_data_dir(Settings(data_dir=tmp_path / "data"))
    check_data_dir(Settings(data_dir=tmp_path / "new" / "data"))
    assert (tmp_path / "new" / "data").is_dir()


@pytest.fixture
def logging_restored() -> Iterator[None]:
    names = ["", *QUIET_LIBRARIES]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("logging_restored")
def test_libraries_log_warnings_only() -> None:
    configure_logging("info")
    for library in ("highdicom.seg.sop", "alembic.runtime.migration", "pynetdicom.assoc", "httpx"):
        assert not logging.getLogger(library).isEnabledFor(logging.INFO), library
        assert logging.getLogger(library).isEnabledFor(logging.WARNING), library
    assert logging.getLogger("medserve.core.registry").isEnabledFor(logging.INFO)
    configure_logging("debug")
    assert not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)  # it would dump datasets
