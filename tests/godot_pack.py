"""Godot's PCK pack format, version 3 (Godot 4.5+): the ``mainPack`` a Godot 4 web export template
runs, written from a project folder so the engine tests need no Godot editor to export one.

Layout (little-endian), as Godot's ``core/io/file_access_pack.cpp`` reads it: a header
(``GDPC``, format version, engine major/minor/patch, flags, the file base and the directory
offset, both relative to the start of the pack, 16 reserved words), the file contents aligned
to ``ALIGNMENT``, then the directory: a count and per file its path without ``res://`` (NUL
padded to a multiple of 4, length first), offset from the file base, size, MD5 and flags.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from pathlib import Path

MAGIC = b"GDPC"
FORMAT_VERSION = 3
FLAG_REL_FILEBASE = 2  # offsets are relative to the pack's start: always set in version 3
ALIGNMENT = 16
HEADER = struct.Struct("<4s5I2Q16I")
ENTRY = struct.Struct("<2Q16sI")
CLASS_CACHE = ".godot/global_script_class_cache.cfg"


def _padded(data: bytes, size: int) -> bytes:
    return data + b"\0" * (-len(data) % size)


def write_pack(files: Mapping[str, bytes], engine: tuple[int, int, int] = (4, 6, 0)) -> bytes:
    """A pack of ``files`` (``res://``-relative paths, e.g. ``project.godot``, to contents)."""
    file_base = len(_padded(bytes(HEADER.size), ALIGNMENT))
    body = bytearray()
    directory = bytearray(struct.pack("<I", len(files)))
    for path, data in sorted((path.removeprefix("res://"), data) for path, data in files.items()):
        name = _padded(path.encode(), 4)
        directory += struct.pack("<I", len(name)) + name
        directory += ENTRY.pack(len(body), len(data), hashlib.md5(data).digest(), 0)
        body += _padded(data, ALIGNMENT)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, *engine, FLAG_REL_FILEBASE, file_base, file_base + len(body), *[0] * 16)
    return _padded(header, ALIGNMENT) + bytes(body) + bytes(directory)


def read_pack(pack: bytes) -> dict[str, bytes]:
    """The files of a version 3 pack (checks the header and every MD5)."""
    magic, version, *_, flags, file_base, dir_offset = HEADER.unpack_from(pack)[:8]
    if magic != MAGIC or version != FORMAT_VERSION or not flags & FLAG_REL_FILEBASE:
        raise ValueError(f"not a PCK version 3 pack: {magic!r} v{version} flags {flags}")
    (count,) = struct.unpack_from("<I", pack, dir_offset)
    position = dir_offset + 4
    files = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<I", pack, position)
        path = pack[position + 4 : position + 4 + length].rstrip(b"\0").decode()
        offset, size, md5, _flags = ENTRY.unpack_from(pack, position + 4 + length)
        position += 4 + length + ENTRY.size
        data = pack[file_base + offset : file_base + offset + size]
        if hashlib.md5(data).digest() != md5:
            raise ValueError(f"{path}: MD5 mismatch")
        files[path] = data
    return files


def project_files(*folders: tuple[Path, str]) -> dict[str, bytes]:
    """The files of project folders, each ``(folder, res:// prefix)``, with the global class
    cache the engine needs for ``class_name`` (an exported project has it; a folder does not)."""
    files = {
        prefix + path.relative_to(folder).as_posix(): path.read_bytes()
        for folder, prefix in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    files[CLASS_CACHE] = class_cache(files)
    return files


def class_cache(files: Mapping[str, bytes]) -> bytes:
    """``.godot/global_script_class_cache.cfg`` for the ``class_name`` scripts among ``files``."""
    entries = []
    for path, data in sorted(files.items()):
        if not path.endswith(".gd"):
            continue
        source = data.decode()
        name = re.search(r"^class_name\s+(\w+)", source, re.M)
        base = re.search(r"^extends\s+(\w+)", source, re.M)
        if name:
            entries.append(
                f'{{\n"base": &"{base[1] if base else "RefCounted"}",\n"class": &"{name[1]}",\n"icon": "",\n'
                f'"is_abstract": false,\n"is_tool": {"true" if source.startswith("@tool") else "false"},\n'
                f'"language": &"GDScript",\n"path": "res://{path}"\n}}'
            )
    return ("list=[" + ", ".join(entries) + "]\n").encode()
