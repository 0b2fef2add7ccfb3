"""A python3-pyxs client exercising our xenstored: transactions (with a
conflict and its retry) and watches. Prints one JSON document of what it saw."""
import json
import sys

from pyxs import Client, PyXSError

socket_path = sys.argv[1]
report = {}

with Client(unix_socket_path=socket_path) as first, Client(unix_socket_path=socket_path) as second:
    first[b"/pyxs/counter"] = b"0"

    # A read-modify-write transaction that another client interferes with once.
    attempts = 0
    while True:
        attempts += 1
        first.transaction()
        value = int(first[b"/pyxs/counter"])
        if attempts == 1:
            second[b"/pyxs/counter"] = b"100"
        first[b"/pyxs/counter"] = str(value + 1).encode()
        if first.commit():
            break
    report["attempts"] = attempts
    report["counter"] = first[b"/pyxs/counter"].decode()

    # An aborted transaction leaves nothing behind.
    first.transaction()
    first[b"/pyxs/aborted"] = b"x"
    first.rollback()
    report["aborted_exists"] = first.exists(b"/pyxs/aborted")

    # Errors come back as errno values.
    try:
        first[b"/pyxs/missing"]
    except PyXSError as err:
        report["missing_errno"] = err.args[0]

    # Watches: the first event, then changes made by another client.
    monitor = first.monitor()
    monitor.watch(b"/pyxs/watched", b"token-1")
    events = monitor.wait()
    seen = [next(events)]
    second[b"/pyxs/watched/a"] = b"1"
    seen.append(next(events))
    second.transaction()
    second[b"/pyxs/watched/b"] = b"2"
    second.commit()
    seen.append(next(events))
    second.delete(b"/pyxs/watched")
    seen.append(next(events))
    monitor.unwatch(b"/pyxs/watched", b"token-1")
    report["events"] = [[e.path.decode(), e.token.decode()] for e in seen]

    first.set_perms(b"/pyxs/counter", [b"b0", b"r5"])
    report["perms"] = [p.decode() for p in first.get_perms(b"/pyxs/counter")]
    report["list"] = sorted(p.decode() for p in first.list(b"/pyxs"))
    report["domain_path"] = first.get_domain_path(3).decode()

print(json.dumps(report))
