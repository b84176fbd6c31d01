"""The kernel's socket tables read as psutil reads them: ports, addresses, owners, inodes.

Lines are written here the way the kernel writes ``/proc/net/tcp{,6}`` (each 32-bit word of
the address in the host's byte order, the port in hex), and read back; psutil's own decoder
is the reference for the addresses, since the listeners used to come from psutil.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec_kitty_supervisor._discovery import split_proc_cmdline
from spec_kitty_supervisor._listen_table import KernelListener, parse_listen_table, port_uids

LISTEN, ESTABLISHED = "0A", "01"


def kernel_address(address: str) -> str:
    packed = ipaddress.ip_address(address).packed
    return "".join(
        f"{int.from_bytes(packed[at : at + 4], sys.byteorder):08X}"
        for at in range(0, len(packed), 4)
    )


def kernel_line(
    address: str, port: int, *, state: str = LISTEN, uid: int = 1000, inode: int = 7
) -> str:
    local = f"{kernel_address(address)}:{port:04X}"
    remote = f"{kernel_address('0.0.0.0' if '.' in address else '::')}:0000"
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 "
        f"{uid:>5}        0 {inode} 1 0000000000000000 100 0 0 10 0"
    )


def test_listening_sockets_in_the_range_are_read_with_owner_and_inode() -> None:
    lines = [
        kernel_line("127.0.0.1", 9401, uid=1000, inode=11),
        kernel_line("0.0.0.0", 9402, uid=0, inode=12),
        kernel_line("127.0.0.1", 9403, state=ESTABLISHED, inode=13),  # a connection, not a listener
        kernel_line("127.0.0.1", 9450, inode=14),  # the range is half-open
        kernel_line("127.0.0.1", 22, inode=15),
    ]

    assert parse_listen_table(lines, socket.AF_INET, 9400, 9450) == [
        KernelListener(9401, "127.0.0.1", 1000, 11),
        KernelListener(9402, "0.0.0.0", 0, 12),
    ]


def test_ipv6_sockets_are_read_with_their_addresses() -> None:
    lines = [
        kernel_line("::1", 9401, inode=21),
        kernel_line("::", 9402, inode=22),
        kernel_line("::ffff:127.0.0.1", 9403, inode=23),
    ]

    found = parse_listen_table(lines, socket.AF_INET6, 9400, 9450)

    assert [(entry.port, entry.address, entry.inode) for entry in found] == [
        (9401, "::1", 21),
        (9402, "::", 22),
        (9403, "::ffff:127.0.0.1", 23),
    ]


@pytest.mark.skipif(sys.byteorder != "little", reason="a line as a little-endian kernel writes it")
def test_a_line_as_the_kernel_wrote_it() -> None:
    line = (
        "   3: 0100007F:24B9 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000"
        "        0 4242 1 0000000000000000 100 0 0 10 0"
    )

    assert parse_listen_table([line], socket.AF_INET, 9400, 9450) == [
        KernelListener(9401, "127.0.0.1", 1000, 4242)
    ]


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil's Linux decoder")
@given(address=st.one_of(ipv4, ipv6), port=st.integers(9400, 9449))
def test_addresses_read_as_psutil_reads_them(address: str, port: int) -> None:
    from psutil._pslinux import NetConnections

    family = socket.AF_INET if "." in address and ":" not in address else socket.AF_INET6
    line = kernel_line(address, port)

    (found,) = parse_listen_table([line], family, 9400, 9450)

    expected = NetConnections.decode_address(line.split()[1], family)
    assert (found.address, found.port) == (expected.ip, expected.port)


def test_a_port_held_by_two_users_is_named_by_the_foreign_one() -> None:
    own = os.getuid()
    other = own + 1
    sockets = [
        KernelListener(9401, "127.0.0.1", own, 1),
        KernelListener(9401, "::1", other, 2),
        KernelListener(9402, "127.0.0.1", own, 3),
    ]

    assert port_uids(sockets) == {9401: other, 9402: own}


@pytest.mark.parametrize(
    ("data", "argv"),
    [
        ("python\0-c\0print(1)\0--x=a b\0", ["python", "-c", "print(1)", "--x=a b"]),
        ("python\0-c\0", ["python", "-c"]),
        ("", []),  # a kernel thread
        # setproctitle: one title, spaces between the words (psutil's issue #1179)
        ("spec-kitty daemon 9401", ["spec-kitty", "daemon", "9401"]),
        ("spec-kitty daemon 9401\0", ["spec-kitty", "daemon", "9401"]),
        ("title with  two spaces ", ["title", "with", "", "two", "spaces"]),
    ],
)
def test_the_command_line_is_split_as_psutil_splits_it(data: str, argv: list[str]) -> None:
    assert split_proc_cmdline(data) == argv
