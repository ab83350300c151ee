"""Python's usual REST client as a contender: one requests.Session (keep-alive),
N POSTs of the same JSON body and headers, each answer decoded with .json().

    /usr/bin/python3 bench/py_requests.py URL BODY N USER_AGENT  ->  "calls=N seconds=S"
"""
import sys
import time

import requests


def main():
    url, body, n, ua = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": ua}
    session = requests.Session()

    def one():
        r = session.post(url, data=body, headers=headers)
        if r.status_code != 200:
            raise SystemExit("HTTP %d" % r.status_code)
        return r.json()["result"]

    one()  # opens the connection
    t0 = time.monotonic()
    for _ in range(n):
        one()
    print("calls=%d seconds=%.6f" % (n, time.monotonic() - t0))


main()
