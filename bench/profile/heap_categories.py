#!/usr/bin/env python3
"""Sums a heaptrack peak-heap profile (folded stacks, from
`heaptrack_print --flamegraph-cost-type peak -F FILE`) by what holds the bytes,
and divides by the number of requests that were waiting.

    heap_categories.py PEAK.folded [REQUESTS]

A stack counts for the first category whose pattern it matches."""

import collections
import re
import sys

CATEGORIES = [
    ("redis client: commands in flight",
     r"redis::|connection_manager\.rs|multiplexed_connection|script\.rs|cmd\.rs|write_arg"),
    ("gateway: a request's submission and answer (two boxes from RouteService::call;"
     " the submission is freed once the command is produced)",
     r"pin<> \(boxed\.rs\);call \(serving\.rs\)"),
    ("axum: boxed route future (with the observing layer's state)",
     r"boxed_clone_sync"),
    ("hyper/h2: stream state, header and body buffers",
     r"\(recv\.rs\)|\(streams\.rs\)|h2::|\(buffer\.rs\)|hpack|recv_headers|recv_frame|decoder\.rs|proto::h2"),
    ("tokio: one task per HTTP/2 stream", r"bind_new_task"),
    ("request headers kept by the handler", r"request_parts\.rs"),
    ("kafka producer (delivery futures, librdkafka buffers)", r"rd_kafka|future_producer"),
    ("gateway: waiter", r"waiters\.rs"),
    ("start-up (runtime, client configuration)", r"builder\.rs|thread_info"),
]


def main() -> None:
    path = sys.argv[1]
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    total = 0
    sums: collections.Counter = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for name, pattern in CATEGORIES:
            if re.search(pattern, stack):
                sums[name] += n
                break
        else:
            sums["other"] += n
    print(f"peak heap {total / 1e6:.1f} MB: {total / requests:.0f} bytes per waiting request")
    for name, n in sums.most_common():
        print(f"{n / 1e6:8.2f} MB {n / requests:7.0f} B  {name}")


if __name__ == "__main__":
    main()
