#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, as a user's terminal would.

    pty_run.py [--stdout FILE] -- COMMAND [ARG...]

What this program reads on its stdin is typed at the terminal; what the
command writes to the terminal comes out on this program's stdout, escape
sequences and all. With --stdout, the command's stdout goes to FILE
instead (its stdin and stderr stay on the terminal), as with
`COMMAND > FILE` typed at a shell. The exit status is the command's, or
128 + the signal that ended it.
"""
import fcntl
import os
import pty
import select
import struct
import sys
import termios

# A terminal of a common size; a pseudo-terminal starts with 0x0, which no
# line editor draws sensibly on.
ROWS, COLUMNS = 50, 200


def main() -> int:
    args = sys.argv[1:]
    stdout_file = None
    if args[:1] == ["--stdout"]:
        stdout_file, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.stderr.write(__doc__)
        return 2

    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        if stdout_file is not None:
            fd = os.open(stdout_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.close(fd)
        os.execvp(args[0], args)

    stdin_open = True
    while True:
        readers = [master] + ([0] if stdin_open else [])
        ready, _, _ = select.select(readers, [], [])
        if 0 in ready:
            data = os.read(0, 4096)
            if data:
                os.write(master, data)
            else:
                stdin_open = False
        if master in ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the command and every other holder of the terminal are gone
                data = b""
            if not data:
                break
            os.write(1, data)

    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
