"""Issue 19 case 5: a batch job that does one query, then pure-Python work
(no library call under way), until a signal ends it. Prints "ready" once the
query is done; the transaction psycopg2 opened stays open."""
import psycopg2

conn = psycopg2.connect("")
cur = conn.cursor()
cur.execute("SELECT 1")
cur.fetchall()
print("ready", flush=True)
table = {}
n = 0
while True:
    # Interpreter work: bytecode, small objects (pymalloc), now and then a
    # larger one (libc's malloc).
    n = (n * 31 + 7) % 1000003
    table[n % 997] = [n, str(n), (n, n + 1)]
    if n % 101 == 0:
        table[-1] = bytearray(8192)
