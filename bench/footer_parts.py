"""Cost of one footer injection on a hostile body: many empty MIME parts, or an HTML tag run.

By default builds ``--B CRLF CRLF`` repeated (an empty header block and an empty body per part:
7 bytes a part, so 300,000 parts make about 2.1 MB); with ``--html-run KB``, a text/html part of
``<body `` repeated without a ``>`` (100 per line). Times one ``inject`` call in this process and
reports the process's peak RSS growth (and, with ``--tracemalloc``, the peak Python heap).

    .venv/bin/python bench/footer_parts.py                        # 300,000 parts, default bounds
    .venv/bin/python bench/footer_parts.py --max-parts 1000000    # the same with the part cap lifted
    .venv/bin/python bench/footer_parts.py --html-run 1024        # 1 MB of "<body " in an HTML part
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from typing import Any

from smtpplus_milter.mime.footer import Banner, inject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=300_000)
    parser.add_argument("--max-parts", type=int, default=None, help="passed to inject() when given")
    parser.add_argument("--tracemalloc", action="store_true", help="also the peak Python heap (slow)")
    parser.add_argument("--html-run", type=int, default=None, metavar="KB", help="an HTML '<body ' run instead")
    args = parser.parse_args()
    if args.html_run is None:
        body = b"--B\r\n\r\n" * args.parts + b"--B--\r\n"
        headers = [("Content-Type", "multipart/mixed; boundary=B")]
        shape = f"{args.parts} empty parts"
    else:
        line = b"<body " * 100 + b"\r\n"
        body = line * (args.html_run * 1000 // len(line) + 1)
        headers = [("Content-Type", "text/html; charset=us-ascii")]
        shape = f"HTML '<body ' run of {args.html_run} KB"
    kwargs: dict[str, Any] = {} if args.max_parts is None else {"max_parts": args.max_parts, "time_budget": 3600.0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.tracemalloc:
        tracemalloc.start()
    started = time.perf_counter()
    banner = Banner(footer_text="Legal footer", header_html="<p>Banner</p>")
    result = inject(headers, body, banner, marker="smtpplus-footer", **kwargs)
    elapsed = time.perf_counter() - started
    heap = ""
    if args.tracemalloc:
        heap = f", tracemalloc peak {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB"
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{shape}, body {len(body) / 1e6:.2f} MB: {result.status} ({result.reason[:80]})")
    print(f"inject {elapsed:.3f} s{heap}, peak RSS +{(rss_after - rss_before) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
