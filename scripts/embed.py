#!/usr/bin/env python3
"""embed.py - writes a C header that holds a file's bytes (titan serve's status page, built into the binary).

Usage: embed.py INPUT OUTPUT NAME
Defines `static const char NAME[]` (the bytes, then a NUL) and `NAME_LEN` in upper case (the byte count).
"""
import os
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: embed.py INPUT OUTPUT NAME")
    src, dst, name = sys.argv[1:]
    if not name.isidentifier():
        sys.exit(f"embed.py: {name!r} is not a C identifier")
    with open(src, "rb") as f:
        data = f.read()
    guard = "EMBED_" + name.upper() + "_H"
    out = [f"/* {os.path.basename(dst)} - generated from {os.path.basename(src)} by scripts/embed.py; do not edit. */",
           f"#ifndef {guard}", f"#define {guard}", "",
           f"#define {name.upper()}_LEN {len(data)}u", f"static const char {name}[{len(data) + 1}] = {{"]
    for i in range(0, len(data), 16):
        out.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",")
    out += ["    0x00,", "};", "", "#endif", ""]
    tmp = dst + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out))
    os.replace(tmp, dst)


main()
