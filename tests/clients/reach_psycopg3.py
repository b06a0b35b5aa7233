"""psycopg 3 through its pure-Python implementation, which calls libpq via
ctypes (dlopen + dlsym). Opens 3 connections inside transactions, then:
  hold  prints "ready" and sleeps (the test sends SIGTERM)
  exit  calls sys.exit(0) without closing anything
and prints what lastcall saw ("stats ..."), if it is loaded."""
import ctypes
import os
import sys
import time

os.environ["PSYCOPG_IMPL"] = "python"
import psycopg  # noqa: E402

assert psycopg.pq.__impl__ == "python", psycopg.pq.__impl__

conns = []
for i in range(3):
    c = psycopg.connect("")
    c.execute("SELECT 1")  # psycopg opens a transaction here
    conns.append(c)


def stats():
    try:
        get = ctypes.CDLL(None).lastcall_get_stats
    except AttributeError:
        return "stats none"
    s = (ctypes.c_ulong * 64)()
    if get(s, ctypes.sizeof(s)) != 0:
        return "stats none"
    # struct lastcall_stats: pq_opened, pq_failed, pq_closed, pq_live, ...
    return "stats pq_opened=%d pq_live=%d" % (s[0], s[3])


print(stats(), flush=True)
print("ready", flush=True)
if sys.argv[1:] == ["hold"]:
    time.sleep(120)
sys.exit(0)
