"""Rotation, truncation and crash stories that lose or duplicate lines in other log shippers.

Each test streams numbered lines and checks the store contains every number exactly once.
"""

from __future__ import annotations

import os
import shutil

import pyarrow.dataset as ds
from click.testing import CliRunner
from clicktrail.agent import tailer
from clicktrail.agent.checkpoint import CheckpointStore
from clicktrail.agent.cli import main
from clicktrail.agent.config import load_config
from clicktrail.agent.pipeline import PassResult, SourceTail

from .numbered import (
    append,
    rotate_copytruncate,
    rotate_rename,
    stored_numbers,
    write_config,
)


def once(config) -> str:
    result = CliRunner().invoke(main, ["once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def read_rejects(store) -> list[str]:
    table = ds.dataset(store / "rejects", format="parquet", partitioning="hive").to_table()
    return table.sort_by("source_offset").column("reason").to_pylist()


def counters_of(workdir) -> dict[str, int]:
    checkpoints = CheckpointStore(str(workdir / "state"))
    try:
        return checkpoints.counters()["tracking"]
    finally:
        checkpoints.close()


def test_rename_rotation_reads_old_file_to_end(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 10))
    once(config)

    append(log, range(10, 15))  # written after the last read, before the rotation
    rotate_rename(log)
    append(log, range(15, 20))
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(20))


def test_copytruncate_recovers_lines_from_copy(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 10))
    once(config)

    append(log, range(10, 15))
    rotate_copytruncate(log)
    append(log, range(15, 17))
    once(config)
    append(log, range(17, 20))
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(20))


def test_compressed_before_finished_read_once(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 10))
    once(config)

    append(log, range(10, 12))
    rotate_rename(log)        # t.log.1 contains 0-11, read up to 9
    append(log, range(12, 14))
    rotate_rename(log)        # t.log.2.gz (compressed, unfinished), t.log.1 contains 12-13
    append(log, range(14, 16))
    once(config)
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(16))


def test_many_rotations_while_stopped(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 5))
    once(config)

    number = 5
    for rotation in range(6):
        append(log, range(number, number + 7))
        number += 7
        if rotation % 2:
            rotate_copytruncate(log)
        else:
            rotate_rename(log)
    append(log, range(number, number + 3))
    number += 3
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(number))
    assert len(list((tmp_path / "logs").glob("t.log.*.gz"))) == 5


def test_glob_matching_rotated_names_no_duplicates(tmp_path):
    config = write_config(tmp_path, pattern="t.log*")
    log = tmp_path / "logs" / "t.log"
    for start in range(0, 40, 10):
        append(log, range(start, start + 10))
        once(config)
        rotate_rename(log)
    once(config)
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(40))


def test_partial_last_line_waits_across_restarts(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 3))
    with log.open("ab") as f:
        f.write(b'127.0.0.1 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/3.g')
    once(config)
    assert stored_numbers(tmp_path / "store") == [0, 1, 2]

    with log.open("ab") as f:
        f.write(b'if HTTP/1.1" 200 42 "-" "t"\n')
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 1, 2, 3]


def test_lost_checkpoint_rewrites_same_objects(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 30))
    once(config)
    objects = sorted(p.name for p in (tmp_path / "store").rglob("*.parquet"))

    # Power failure took the state folder: everything is read again under the same names.
    shutil.rmtree(tmp_path / "state")
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(30))
    assert sorted(p.name for p in (tmp_path / "store").rglob("*.parquet")) == objects


def test_huge_line_is_cut_and_reading_goes_on(tmp_path):
    config = write_config(tmp_path, max_line_bytes=4096, read_chunk_bytes=65536)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 2))
    with log.open("ab") as f:
        f.write(b"x" * (3 * 1024 * 1024) + b"\n")
    append(log, range(2, 4))
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 1, 2, 3]
    assert counters_of(tmp_path)["long_lines"] == 1


def test_invalid_utf8_kept_and_counted(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, [0])
    with log.open("ab") as f:
        f.write(b'127.0.0.1 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/1.gif HTTP/1.1" 200 42'
                b' "-" "caf\xe9 \xff"\n')
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 1]
    assert counters_of(tmp_path)["replaced_characters"] == 2


def test_flood_of_tiny_files_one_object_each(tmp_path):
    config = write_config(tmp_path, pattern="*.log")
    for n in range(300):
        append(tmp_path / "logs" / f"f{n:03d}.log", [n])
    once(config)
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(300))
    assert len(list((tmp_path / "store" / "events").rglob("*.parquet"))) == 300


def test_file_shorter_than_fingerprint(tmp_path):
    config = write_config(tmp_path, fingerprint_bytes=4096)
    log = tmp_path / "logs" / "t.log"
    append(log, [0])
    once(config)
    append(log, [1])
    once(config)
    rotate_rename(log)
    append(log, [2])
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 1, 2]


def tail_of(config_path) -> tuple[SourceTail, CheckpointStore]:
    config = load_config(config_path)
    checkpoints = CheckpointStore(config.agent.state_dir)
    return SourceTail(config, config.sources[0], checkpoints), checkpoints


def test_deleted_while_open_read_through_descriptor(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 5))
    tail, checkpoints = tail_of(config)
    result = PassResult()
    tail.poll(result)
    tail.flush(result)

    append(log, range(5, 8))
    os.unlink(log)
    tail.poll(result)
    tail.flush(result)
    tail.close()
    checkpoints.close()
    once(config)

    assert stored_numbers(tmp_path / "store") == list(range(8))


def test_inode_reuse_is_a_new_generation():
    known = {"g1": tailer.Generation("g1", "g1", "/l/t.log", 1, 42, b"first line A\n", 13)}
    reused = tailer.FileState("/l/t.log", 1, 42, 40, False, b"other line B\nmore\n", "g2")
    grown = tailer.FileState("/l/t.log", 1, 42, 40, False, b"first line A\nmore\n", "g1")
    truncated = tailer.FileState("/l/t.log", 1, 42, 5, False, b"first", "g1x")

    assert tailer.resolve(reused, known).generation == "g2"
    assert tailer.resolve(reused, known).offset == 0
    assert tailer.resolve(grown, known) is known["g1"]
    assert tailer.resolve(truncated, known).offset == 0


def test_same_first_line_other_content_gets_own_generation():
    known = {"g1": tailer.Generation("g1", "g1", "/l/a.log", 1, 42, b"# header\nline a\n", 16)}
    other = tailer.FileState("/l/b.log", 1, 43, 16, False, b"# header\nline b\n", "g1")

    generation = tailer.resolve(other, known)

    assert generation.generation != "g1"
    assert generation.offset == 0


def test_far_dates_are_rejected(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, [0])
    with log.open("ab") as f:
        f.write(b'127.0.0.1 - - [04/Dec/0000:10:00:00 +0000] "GET /o/d1/1.gif HTTP/1.1" 200 1 "-" "t"\n')
        f.write(b'127.0.0.1 - - [31/Dec/9999:23:59:59 -1400] "GET /o/d1/2.gif HTTP/1.1" 200 1 "-" "t"\n')
    append(log, [3])
    once(config)
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 3]
    rejects = read_rejects(tmp_path / "store")
    assert rejects == ["event time outside 1970 to 2199"] * 2


def test_unterminated_last_line_of_compressed_copy_is_read(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, [0])
    with log.open("ab") as f:
        f.write(b'127.0.0.1 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/1.gif HTTP/1.1" 200 1 "-" "t"')
    once(config)
    assert stored_numbers(tmp_path / "store") == [0]

    rotate_rename(log)
    rotate_rename(log)  # t.log.2.gz: finished, its last line will never end
    once(config)

    assert stored_numbers(tmp_path / "store") == [0, 1]


def test_copy_still_being_written_waits():
    known = {"g1": tailer.Generation("g1", "g1", "/l/t.log", 1, 42, b"first line A\n", 500)}
    partial_copy = tailer.FileState("/l/t.log.1", 1, 77, 200, False, b"first line A\n", "g1")
    finished_copy = tailer.FileState("/l/t.log.1", 1, 77, 900, False, b"first line A\n", "g1")

    assert tailer.resolve(partial_copy, known) is None
    assert tailer.resolve(finished_copy, known) is known["g1"]
