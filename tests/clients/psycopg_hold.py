"""A psycopg2 program with open transactions and no shutdown code at all."""
import sys
import time

import psycopg2

conns = []
for i in range(3):
    c = psycopg2.connect("")
    cur = c.cursor()
    cur.execute("SELECT 1")  # psycopg2 opens a transaction here
    conns.append(c)
print("ready", flush=True)
time.sleep(120)
sys.exit(0)
