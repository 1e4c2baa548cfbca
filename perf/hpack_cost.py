#!/usr/bin/env python3
"""What nghttp2's HPACK encoder costs for the trace fields Remora adds toward an HTTP/2 upstream:
callgrind instructions inside `nghttp2_hd_deflate_hd` per header block, for blocks of the fields an
upstream request carries without tracing, and with `traceparent` and `x-request-id` (fresh random
values on every block, NO_INDEX, names in the dynamic table: what Remora sends), in several value
alphabets. nghttp2 Huffman-codes a string whenever that is shorter, and every hex digit has a code of
5 or 6 bits, so random hex is always Huffman-coded; an alphabet whose codes average 8 bits or more
is sent raw (the `raw` row shows what that would save; no such alphabet is a valid traceparent or
UUID).

    perf/hpack_cost.py                 # 20,000 blocks per row
    perf/hpack_cost.py --blocks 5000

Links the system libnghttp2 (the one Remora uses). Needs: cc, libnghttp2-dev, valgrind.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

C = r"""
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t s = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }

/* The same value characters everywhere but the fixed punctuation of a traceparent and a UUID. */
static void fill(uint8_t *p, size_t n, const char *alpha, size_t al) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)alpha[rnd() % al];
}

static int deflate_block(nghttp2_hd_deflater *d, nghttp2_nv *nv, size_t n) {
    static uint8_t out[4096];
    return nghttp2_hd_deflate_hd(d, out, sizeof out, nv, n) < 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *alpha = argv[1];
    int blocks = atoi(argv[2]);
    int traced = atoi(argv[3]);
    size_t al = strlen(alpha);
    nghttp2_hd_deflater *d;
    if (nghttp2_hd_deflate_new(&d, 4096) != 0) return 1;
    uint8_t tp[55], id[36];
    memcpy(tp, "00-", 3); tp[35] = '-'; tp[52] = '-'; tp[53] = '0'; tp[54] = '1';
    id[8] = id[13] = id[18] = id[23] = '-';
#define NV(n, v, f) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, (f) }
    nghttp2_nv nv[] = {
        NV(":method", "GET", NGHTTP2_NV_FLAG_NONE), NV(":scheme", "http", NGHTTP2_NV_FLAG_NONE),
        NV(":authority", "127.0.0.1:8080", NGHTTP2_NV_FLAG_NONE), NV(":path", "/", NGHTTP2_NV_FLAG_NONE),
        NV("user-agent", "h2load nghttp2/1.52.0", NGHTTP2_NV_FLAG_NONE),
        NV("x-forwarded-for", "127.0.0.1", NGHTTP2_NV_FLAG_NONE), NV("x-forwarded-proto", "http", NGHTTP2_NV_FLAG_NONE),
        { (uint8_t *)"x-request-id", id, 12, 36, NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)"traceparent", tp, 11, 55, NGHTTP2_NV_FLAG_NONE },
    };
    size_t n = traced ? 9 : 7;
    /* The first block indexes everything (the trace names with it, as Remora's first request on a
       connection does); later ones keep the trace values out of the table. */
    fill(id, 8, alpha, al); fill(tp + 3, 32, alpha, al);
    if (deflate_block(d, nv, n)) return 1;
    nv[7].flags = nv[8].flags = NGHTTP2_NV_FLAG_NO_INDEX;
    for (int i = 0; i < blocks; i++) {
        if (traced) {
            fill(id, 8, alpha, al); fill(id + 9, 4, alpha, al); fill(id + 14, 4, alpha, al);
            fill(id + 19, 4, alpha, al); fill(id + 24, 12, alpha, al);
            fill(tp + 3, 32, alpha, al); fill(tp + 36, 16, alpha, al);
        }
        if (deflate_block(d, nv, n)) return 1;
    }
    nghttp2_hd_deflate_del(d);
    return 0;
}
"""

ALPHABETS = [
    ("lowercase hex (W3C, UUID): what Remora sends", "0123456789abcdef"),
    ("uppercase hex", "0123456789ABCDEF"),
    ("digits only", "0123456789"),
    ("raw: characters whose codes have 10 bits or more (sent without Huffman coding; not a valid traceparent)", "!()?+|"),
]


def cost(binary: Path, alpha: str, blocks: int, traced: bool, work: Path) -> float:
    out = work / f"cg.{abs(hash((alpha, traced)))}"
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--toggle-collect=nghttp2_hd_deflate_hd", str(binary), alpha, str(blocks), "1" if traced else "0"],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"hpack_cost: the program failed: {p.stderr[-1000:]}")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(errors="replace"), re.M)
    return int(m.group(1)) / (blocks + 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=20000)
    a = ap.parse_args()
    for tool in ("cc", "valgrind"):
        if not shutil.which(tool):
            print(f"hpack_cost: {tool} is not installed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="hpack-cost-") as t:
        work = Path(t)
        (work / "h.c").write_text(C)
        b = work / "h"
        r = subprocess.run(["cc", "-O2", "-o", str(b), str(work / "h.c"), "-lnghttp2"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"hpack_cost: cc failed (libnghttp2-dev?):\n{r.stderr[-1500:]}", file=sys.stderr)
            return 2
        plain = cost(b, ALPHABETS[0][1], a.blocks, False, work)
        print(f"nghttp2_hd_deflate_hd, instructions per header block ({a.blocks:,} blocks; "
              "7 fields: pseudo-headers, user-agent, x-forwarded-*):\n")
        print("| block | Ir / block | + over the block without trace fields |")
        print("|---|---:|---:|")
        print(f"| without trace fields | {plain:,.0f} | |")
        for what, alpha in ALPHABETS:
            c = cost(b, alpha, a.blocks, True, work)
            print(f"| + x-request-id (36) and traceparent (55), {what} | {c:,.0f} | {c - plain:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
