"""This host's process table: tritonserver and its stub processes by /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruthctl.procs import ProcessTable, Stub, match_stubs, stubs_of

STUB = "/x/backends/python/triton_python_backend_stub"


def fake_proc(root: Path, processes: dict[int, list[str]]) -> Path:
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()
    return root


def stub(model: str, instance: str, parent: int) -> list[str]:
    return [
        STUB,
        f"/repo/{model}/1/model.py",
        "ruth1_abc",
        "4194304",
        "4194304",
        str(parent),
        "/x/backends/python",
        "336",
        instance,
        "DEFAULT",
    ]


@pytest.fixture
def table(tmp_path: Path) -> ProcessTable:
    return ProcessTable(
        fake_proc(
            tmp_path / "proc",
            {
                100: [
                    "/venv/pytriton/tritonserver/bin/tritonserver",
                    "--model-repository=/repo",
                    "--http-port=8000",
                    "--grpc-port=8001",
                ],
                200: ["/other/bin/tritonserver", "--http-port", "9000"],
                101: stub("fall", "fall_0_0", 100),
                102: stub("fall_detection", "fall_detection_0_0", 100),
                103: stub("fall_detection", "fall_detection_0_1", 100),
                201: stub("fall_detection", "fall_detection_0_0", 200),
                300: ["python", "-m", "http.server", "--http-port=8000"],
            },
        )
    )


def test_the_server_is_found_by_its_port_in_either_flag_spelling(table: ProcessTable) -> None:
    assert table.server_pid("127.0.0.1", 8000) == 100
    assert table.server_pid("127.0.0.1", 8001) == 100
    assert table.server_pid("127.0.0.1", 9000) == 200
    assert table.server_pid("127.0.0.1", 7000) is None


def test_stubs_are_counted_per_server_and_per_model_without_prefix_confusion(table: ProcessTable) -> None:
    instances = table.stubs(100)
    assert sorted(instances) == ["fall_0_0", "fall_detection_0_0", "fall_detection_0_1"]
    assert stubs_of("fall_detection", instances) == 2
    assert stubs_of("fall", instances) == 1
    assert stubs_of("fall_detection", table.stubs(200)) == 1


def test_live_stubs_are_counted_and_retired_ones_are_orphans_that_never_count() -> None:
    def live(*names: str) -> list[Stub]:
        return [Stub(100 + i, n, retired=False) for i, n in enumerate(names)]

    whole = match_stubs("fall", ["fall_0_0", "fall_0_1"], live("fall_0_0", "fall_0_1", "fall_detection_0_0"))
    assert (whole.alive, whole.dead, whole.orphans) == (2, 0, ())
    # after an in-place instance update Triton keeps old names and reuses slots (docs/triton-notes.md §8.1)
    renamed = match_stubs(
        "fall", ["fall_0_0", "fall_0_1", "fall_0_2", "fall_0_3"], live("fall_0_1", *["fall_0_2"] * 2, "fall_0_3")
    )
    assert (renamed.alive, renamed.dead, renamed.orphans) == (4, 0, ())
    hidden = match_stubs(
        "fall", ["fall_0_0", "fall_0_1"], [*live("fall_0_0"), Stub(7, "fall_0_0", retired=True)]
    )  # two processes for two instances, but one is a leftover Triton retired
    assert (hidden.alive, hidden.dead) == (1, 1) and hidden.orphans == ("fall_0_0 (pid 7, retired by Triton)",)
    extra = match_stubs("fall", ["fall_0_0"], live("fall_0_0", "fall_0_1"))
    assert (extra.alive, extra.dead) == (1, 0) and "2 live stub processes for 1 instances" in extra.orphans[0]


def test_a_stub_whose_region_is_unlinked_is_retired(tmp_path: Path) -> None:
    argv = ["triton_python_backend_stub", "m.py", "region_a", "1", "1", "100", "/b", "1", "fall_0_0"]
    for pid, maps in {
        101: "7f00-7f10 rw-s 00000000 00:1a 42 /dev/shm/region_a\n",
        102: "7f00-7f10 rw-s 00000000 00:1a 42 /dev/shm/region_a (deleted)\n",
        103: "",  # not mapped (yet): in use, not judged
    }.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))
        (tmp_path / str(pid) / "maps").write_text(maps)
    stubs = {s.pid: s.retired for s in ProcessTable(tmp_path).stub_processes(100)}
    assert stubs == {101: False, 102: True, 103: False}
    assert ProcessTable(tmp_path).stubs(100) == ["fall_0_0", "fall_0_0"]


def test_listening_sockets_and_a_namespaces_addresses_come_from_proc(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {100: ["tritonserver", "--http-port=8000"]})
    (proc / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (proc / "net" / "tcp").write_text(
        header
        + "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
        + "   1: 0100007F:2329 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
    )
    table = ProcessTable(proc)
    assert table.listening(8000)  # 0x1F40, state 0A (LISTEN)
    assert not table.listening(9001)  # 0x2329 is an established connection, not a listener
    (proc / "100" / "net").mkdir()
    (proc / "100" / "net" / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 172.18.0.5\n        /32 host LOCAL\n"
        "     |-- 172.18.255.255\n        /32 link BROADCAST\n"
    )
    assert table.addresses(100) == {"172.18.0.5"}
    assert table.addresses(999) == set()


def test_the_real_proc_table_lists_this_process() -> None:
    import os

    assert any(p.pid == os.getpid() for p in ProcessTable().processes())
